//! The admin HTTP API (its own listener). Every route but `/healthz` needs
//! `Authorization: Bearer <token>`; the token is compared in constant time.
//!
//! - `GET  /metrics` (Prometheus; scrape with `authorization: Bearer`)
//! - `GET  /v1/consumers`
//! - `POST /v1/consumers/{name}/pause` and `/resume`
//! - `POST /v1/consumers/{name}/replay` body: `{"source", "event_type", "since_ms", "until_ms", "dry_run"}`
//! - `GET  /v1/queues/{dead_letter|review}?consumer=&event_type=&since_ms=&until_ms=&error=&ids=3,5`
//! - `GET  /v1/queues/{dead_letter|review}/{consumer}/{id}`: one entry, payload included
//! - `POST /v1/queues/{dead_letter|review}/replay`  body: `{"filter": {...}, "dry_run": true}`
//! - `POST /v1/queues/{dead_letter|review}/discard` body: the same
//!   (a replay answers 202 with the background `job`)
//! - `GET  /v1/jobs`, `GET /v1/jobs/{id}`: replay jobs and their progress
//! - `POST /v1/jobs/{id}/cancel`: stop a replay job after its current batch
//! - `POST /v1/reload`: re-read routes.toml and plugins; 200 with what
//!   changed, or 422 with every problem (the running config stays)
//! - `GET  /v1/alerts`: the anomaly watch's active and recently cleared alerts
//! - `GET  /v1/series`: per-consumer delivered/failed/backlog points, one per
//!   watch interval (the dashboard's sparklines)
//! - `GET  /dashboard`: the operations page. It holds no data and needs no
//!   token; its script calls the routes above with the token the operator
//!   gives it (in the URL fragment, which never reaches a server, or a form).

use super::{AdminError, BulkRequest, HubControl, ParkedEntry, QueueFilter};
use crate::bus::ParkQueue;
use crate::config::Secret;
use std::convert::Infallible;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

#[derive(Debug)]
struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

#[derive(Debug)]
struct Failed(AdminError);
impl warp::reject::Reject for Failed {}

fn error_body(status: StatusCode, code: &str, message: String) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": code, "message": message })),
        status,
    )
    .into_response()
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 9110 §11.1, RFC 6750 §2.1); surrounding blanks
/// are not part of the token.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

fn authorized(token: Arc<Secret>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let token = Arc::clone(&token);
            async move {
                let presented = header.as_deref().and_then(bearer_token).unwrap_or("");
                let expected = token.expose().as_bytes();
                let same_length = presented.len() == expected.len();
                // Compare even on a length mismatch, against itself, so the
                // time taken does not depend on how much of the token matched.
                let equal = if same_length {
                    presented.as_bytes().ct_eq(expected)
                } else {
                    presented.as_bytes().ct_eq(presented.as_bytes()) & subtle::Choice::from(0)
                };
                if bool::from(equal) {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthorized))
                }
            }
        })
        .untuple_one()
}

fn queue() -> impl Filter<Extract = (ParkQueue,), Error = Rejection> + Clone {
    warp::path::param::<String>().and_then(|name: String| async move {
        match name.as_str() {
            "dead_letter" => Ok(ParkQueue::DeadLetter),
            "review" => Ok(ParkQueue::Review),
            _ => Err(warp::reject::not_found()),
        }
    })
}

fn reply<T: serde::Serialize>(
    result: Result<T, AdminError>,
) -> Result<warp::reply::Response, Rejection> {
    match result {
        Ok(value) => Ok(warp::reply::json(&value).into_response()),
        Err(err) => Err(warp::reject::custom(Failed(err))),
    }
}

/// 202 Accepted when the answer describes a job that has only started.
fn reply_started<T: serde::Serialize>(
    result: Result<T, AdminError>,
    started: impl FnOnce(&T) -> bool,
) -> Result<warp::reply::Response, Rejection> {
    let accepted = result.as_ref().is_ok_and(started);
    let mut response = reply(result)?;
    if accepted {
        *response.status_mut() = StatusCode::ACCEPTED;
    }
    Ok(response)
}

fn job_reply(job: Option<super::JobStatus>, id: u64) -> Result<warp::reply::Response, Rejection> {
    match job {
        Some(job) => Ok(warp::reply::json(&job).into_response()),
        None => Ok(error_body(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no job {id}"),
        )),
    }
}

/// The page itself: static, no data, so no token. The policy lets it run
/// only its own inline code and talk only to this listener.
fn dashboard_page() -> warp::reply::Response {
    const PAGE: &str = include_str!("dashboard.html");
    const POLICY: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
        style-src 'unsafe-inline'; img-src data:; connect-src 'self'; \
        base-uri 'none'; frame-ancestors 'none'";
    let mut response = warp::reply::html(PAGE).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", POLICY),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, warp::http::HeaderValue::from_static(value));
    }
    response
}

/// Every admin route, with auth and error mapping.
pub fn routes(
    control: Arc<HubControl>,
    token: Secret,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let token = Arc::new(token);
    let with_control = {
        let control = Arc::clone(&control);
        warp::any().map(move || Arc::clone(&control))
    };
    let health = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response());
    let dashboard = warp::path("dashboard")
        .and(warp::path::end())
        .and(warp::get())
        .map(dashboard_page);
    let alerts = warp::path!("v1" / "alerts")
        .and(warp::get())
        .and(with_control.clone())
        .map(|control: Arc<HubControl>| {
            warp::reply::json(&control.alert_book().alerts()).into_response()
        });
    let series = warp::path!("v1" / "series")
        .and(warp::get())
        .and(with_control.clone())
        .map(|control: Arc<HubControl>| {
            warp::reply::json(&control.alert_book().series()).into_response()
        });

    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_control.clone())
        .and_then(|control: Arc<HubControl>| async move {
            match control.metrics_text().await {
                Ok(text) => Ok(warp::reply::with_header(
                    text,
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .into_response()),
                Err(err) => Err(warp::reject::custom(Failed(AdminError::Bus(err)))),
            }
        });
    let consumers = warp::path!("v1" / "consumers")
        .and(warp::get())
        .and(with_control.clone())
        .and_then(|control: Arc<HubControl>| async move {
            reply(control.status().await.map_err(AdminError::from))
        });
    let pause = warp::path!("v1" / "consumers" / String / "pause")
        .and(warp::post())
        .and(with_control.clone())
        .and_then(|name: String, control: Arc<HubControl>| async move {
            reply(
                control
                    .pause(&name)
                    .map(|()| serde_json::json!({ "consumer": name, "paused": true })),
            )
        });
    let resume = warp::path!("v1" / "consumers" / String / "resume")
        .and(warp::post())
        .and(with_control.clone())
        .and_then(|name: String, control: Arc<HubControl>| async move {
            reply(
                control
                    .resume(&name)
                    .map(|()| serde_json::json!({ "consumer": name, "paused": false })),
            )
        });
    let history = warp::path!("v1" / "consumers" / String / "replay")
        .and(warp::post())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::json::<super::HistoryReplay>())
        .and(with_control.clone())
        .and_then(
            |name: String, request: super::HistoryReplay, control: Arc<HubControl>| async move {
                reply_started(control.replay_history(&name, &request).await, |outcome| {
                    outcome.job.is_some()
                })
            },
        );
    let list = warp::path("v1")
        .and(warp::path("queues"))
        .and(queue())
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::query::<QueueFilter>())
        .and(with_control.clone())
        .and_then(
            |queue: ParkQueue, filter: QueueFilter, control: Arc<HubControl>| async move {
                reply(
                    control
                        .parked(queue, &filter)
                        .await
                        .map(|entries| entries.iter().map(ParkedEntry::from).collect::<Vec<_>>()),
                )
            },
        );
    let show = warp::path("v1")
        .and(warp::path("queues"))
        .and(queue())
        .and(warp::path::param::<String>())
        .and(warp::path::param::<u64>())
        .and(warp::path::end())
        .and(warp::get())
        .and(with_control.clone())
        .and_then(
            |queue: ParkQueue, consumer: String, id: u64, control: Arc<HubControl>| async move {
                match control.parked_entry(queue, &consumer, id).await {
                    Ok(Some(detail)) => Ok(warp::reply::json(&detail).into_response()),
                    Ok(None) => Ok(error_body(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no entry {id} for `{consumer}` in that queue"),
                    )),
                    Err(err) => Err(warp::reject::custom(Failed(err))),
                }
            },
        );
    let replay = warp::path("v1")
        .and(warp::path("queues"))
        .and(queue())
        .and(warp::path("replay"))
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::json::<BulkRequest>())
        .and(with_control.clone())
        .and_then(
            |queue: ParkQueue, request: BulkRequest, control: Arc<HubControl>| async move {
                reply_started(
                    control
                        .replay(queue, &request.filter, request.dry_run, request.batch_size)
                        .await,
                    |outcome| outcome.job.is_some(),
                )
            },
        );
    let discard = warp::path("v1")
        .and(warp::path("queues"))
        .and(queue())
        .and(warp::path("discard"))
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::json::<BulkRequest>())
        .and(with_control.clone())
        .and_then(
            |queue: ParkQueue, request: BulkRequest, control: Arc<HubControl>| async move {
                reply(
                    control
                        .discard(queue, &request.filter, request.dry_run)
                        .await,
                )
            },
        );
    let jobs = warp::path!("v1" / "jobs")
        .and(warp::get())
        .and(with_control.clone())
        .map(|control: Arc<HubControl>| warp::reply::json(&control.jobs()).into_response());
    let job = warp::path!("v1" / "jobs" / u64)
        .and(warp::get())
        .and(with_control.clone())
        .and_then(
            |id: u64, control: Arc<HubControl>| async move { job_reply(control.job(id), id) },
        );
    let cancel = warp::path!("v1" / "jobs" / u64 / "cancel")
        .and(warp::post())
        .and(with_control.clone())
        .and_then(|id: u64, control: Arc<HubControl>| async move {
            job_reply(control.cancel_job(id), id)
        });
    let reload = warp::path!("v1" / "reload")
        .and(warp::post())
        .and(with_control)
        .then(|control: Arc<HubControl>| async move {
            match control.reload().await {
                Ok(report) => warp::reply::json(&report).into_response(),
                Err(problems) => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({
                        "error": "reload_refused",
                        "message": "the running config stays",
                        "problems": problems,
                    })),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .into_response(),
            }
        });

    // Each route boxed and the alternatives folded one at a time: a chain
    // of seventeen unboxed `.or()`s is one nested type that took the
    // compiler minutes to check (warp's known compile-time cliff); a boxed
    // route costs one dynamic call per request, nothing on this listener.
    let api = [
        reload.boxed(),
        alerts.boxed(),
        series.boxed(),
        jobs.boxed(),
        job.boxed(),
        cancel.boxed(),
        metrics.boxed(),
        consumers.boxed(),
        pause.boxed(),
        resume.boxed(),
        history.boxed(),
        list.boxed(),
        show.boxed(),
        replay.boxed(),
        discard.boxed(),
    ]
    .into_iter()
    .reduce(|routes, route| routes.or(route).unify().boxed())
    .expect("at least one route");
    let api = authorized(token).and(api).boxed();
    health
        .boxed()
        .or(dashboard.boxed())
        .unify()
        .or(api)
        .unify()
        .recover(|rejection: Rejection| async move {
            let response = if rejection.find::<Unauthorized>().is_some() {
                let mut response = error_body(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required".into(),
                );
                // RFC 9110 §11.6.1: a 401 names the scheme it wants.
                response.headers_mut().insert(
                    warp::http::header::WWW_AUTHENTICATE,
                    warp::http::HeaderValue::from_static("Bearer realm=\"switchyard-admin\""),
                );
                response
            } else if let Some(Failed(err)) = rejection.find::<Failed>() {
                let status = match err {
                    AdminError::UnknownConsumer(_) => StatusCode::NOT_FOUND,
                    AdminError::BadFilter(_) => StatusCode::BAD_REQUEST,
                    AdminError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                error_body(status, "failed", err.to_string())
            } else if rejection.is_not_found() {
                error_body(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such admin route".into(),
                )
            } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
                error_body(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "wrong method".into(),
                )
            } else {
                error_body(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request is not valid for this route".into(),
                )
            };
            Ok::<_, Infallible>(response)
        })
        .unify()
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_blanks_are_not_the_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
