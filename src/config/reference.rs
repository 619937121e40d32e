//! The config reference and JSON Schema, both generated from [`raw`]: the
//! serde shape, its doc comments and the defaults it carries from
//! [`super::defaults`] are the single source, so the reference cannot drift
//! from what the loader accepts and applies.
//!
//! `switchyard config schema` prints the schema (for editor completion with
//! taplo / Even Better TOML); `switchyard config reference` prints the
//! Markdown committed as `docs/CONFIG.md`, which a test keeps equal.

use super::raw::{self, RawConfig};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// The JSON Schema (draft 2020-12) of routes.toml.
pub fn json_schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(RawConfig))
        .expect("a derived schema serializes");
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), "switchyard routes.toml".into());
    }
    schema
}

/// The top-level tables of routes.toml (`server`, `bus`, …, `routes`), from
/// the schema, so a check that every config issue sits under one of them
/// cannot fall behind a new table.
pub fn top_level_tables() -> Vec<String> {
    json_schema()
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every key of routes.toml, table by table, with its type and its
/// documentation (default included), as Markdown.
pub fn markdown() -> String {
    let schema = json_schema();
    let definitions = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = String::from(
        "# routes.toml reference\n\n\
         Generated from the code by `switchyard config reference` (a test keeps this \
         file equal to its output); `switchyard config schema` prints the same as a \
         JSON Schema. Durations are written `\"250ms\"`, `\"30s\"`, `\"5m\"`, `\"7d\"`; \
         sizes `\"64KiB\"`, `\"1MiB\"`. Secrets are references, `env:NAME` or \
         `file:PATH`, never values.\n",
    );
    let _ = writeln!(out, "\n## Environment overrides\n");
    let _ = writeln!(out, "| variable | overrides |\n|---|---|");
    for (variable, key) in raw::ENV_OVERRIDES {
        let _ = writeln!(out, "| `{variable}` | `{key}` |");
    }
    let _ = writeln!(
        out,
        "| `{}` | `connections.<name>.base_url` (`<NAME>`: the name upper-cased, `-` as `_`) |",
        raw::connection_url_variable("<name>")
    );
    let root = schema.clone();
    section(&root, "", "Top level", "", &definitions, &mut out);
    out
}

/// Appends the section of the table at `path` (its keys that are values),
/// then the sections of its sub-tables, depth first.
fn section(
    node: &Value,
    path: &str,
    heading: &str,
    description: &str,
    definitions: &Map<String, Value>,
    out: &mut String,
) {
    let node = resolve(node, definitions);
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let mut rows = String::new();
    let mut nested = Vec::new();
    for (key, property) in properties {
        let text = text_of(property, definitions).replace('\n', " ");
        let child = resolve(property, definitions);
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match table_kind(child, definitions) {
            Some(Table::Plain(table)) => nested.push((format!("[{here}]"), here, text, table)),
            Some(Table::Map(table)) => {
                let here = format!("{here}.<name>");
                nested.push((format!("[{here}]"), here, text, table));
            }
            Some(Table::Array(table)) => nested.push((format!("[[{here}]]"), here, text, table)),
            None => {
                let kind = type_of(child, definitions);
                let text = with_default(&text, property);
                let _ = writeln!(rows, "| `{key}` | {kind} | {text} |");
            }
        }
    }
    if !rows.is_empty() || !description.is_empty() {
        let _ = write!(out, "\n## {heading}\n\n");
    }
    if !description.is_empty() {
        let _ = write!(out, "{description}\n\n");
    }
    if !rows.is_empty() {
        let _ = write!(
            out,
            "| key | type | meaning and default |\n|---|---|---|\n{rows}"
        );
    }
    for (heading, path, text, table) in nested {
        section(
            &table,
            &path,
            &format!("`{heading}`"),
            &text,
            definitions,
            out,
        );
    }
}

enum Table {
    Plain(Value),
    Map(Value),
    Array(Value),
}

fn table_kind(node: &Value, definitions: &Map<String, Value>) -> Option<Table> {
    let node = resolve(node, definitions);
    if node.get("properties").is_some() {
        return Some(Table::Plain(node.clone()));
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        let values = resolve(values, definitions);
        if values.get("properties").is_some() {
            return Some(Table::Map(values.clone()));
        }
    }
    if let Some(items) = node.get("items") {
        let items = resolve(items, definitions);
        if items.get("properties").is_some() {
            return Some(Table::Array(items.clone()));
        }
    }
    None
}

/// Follows `$ref`, and unwraps `Option<T>` (`anyOf: [T, null]`).
fn resolve<'a>(node: &'a Value, definitions: &'a Map<String, Value>) -> &'a Value {
    if let Some(name) = node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        && let Some(target) = definitions.get(name)
    {
        return resolve(target, definitions);
    }
    if let Some(options) = node.get("anyOf").and_then(Value::as_array) {
        let not_null: Vec<&Value> = options
            .iter()
            .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [only] = not_null[..] {
            return resolve(only, definitions);
        }
    }
    node
}

fn text_of(node: &Value, definitions: &Map<String, Value>) -> String {
    node.get("description")
        .or_else(|| resolve(node, definitions).get("description"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// The description followed by the key's schema default, if it has one.
/// JSON and TOML write these values alike (`"10s"`, `64`, `true`, `[]`).
fn with_default(text: &str, node: &Value) -> String {
    match node.get("default") {
        Some(value) if text.is_empty() => format!("Default `{value}`."),
        Some(value) => format!("{text} Default `{value}`."),
        None => text.to_owned(),
    }
}

fn type_of(node: &Value, definitions: &Map<String, Value>) -> String {
    let node = resolve(node, definitions);
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    match types.as_slice() {
        ["array"] => format!(
            "array of {}",
            node.get("items")
                .map_or("any".to_owned(), |items| type_of(items, definitions))
        ),
        ["object"] => format!(
            "table of {}",
            node.get("additionalProperties")
                .map_or("any".to_owned(), |values| type_of(values, definitions))
        ),
        ["string"] => "string".to_owned(),
        ["integer"] => "integer".to_owned(),
        ["number"] => "number".to_owned(),
        ["boolean"] => "boolean".to_owned(),
        _ => "any".to_owned(),
    }
}
