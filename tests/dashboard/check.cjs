#!/usr/bin/env node
// Drives the admin dashboard (src/admin/dashboard.html) in headless Chromium.
//
//   DASH_URL=http://127.0.0.1:PORT/dashboard DASH_TOKEN=... DASH_OUT=/tmp/shots \
//   DASH_EXPECT='{"states":{"dash_crm":"running"},"alert":"dead_letter_growth",
//                "discard":{"consumer":"dash_crm","event_id":"evt_..."},
//                "replay":{"consumer":"dash_crm","event_id":"evt_..."}}' \
//   NODE_PATH=tests/.sdk/node/node_modules node tests/dashboard/check.cjs
//
// Optional: CHROMIUM (default /usr/bin/chromium), DASH_TIMEOUT_MS (per step, default 20000).
// Prints one JSON line on success (exit 0); on failure saves dashboard-failure.png,
// prints the reason to stderr and exits 1.
'use strict';
const fs = require('fs');
const path = require('path');

function loadPlaywright() {
  try {
    return require('playwright-core');
  } catch (_) {
    return require(path.join(__dirname, '..', '.sdk', 'node', 'node_modules', 'playwright-core'));
  }
}

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

const STEP_MS = Number(process.env.DASH_TIMEOUT_MS) || 20000;

// Never print the token: playwright's errors quote the URL, which carries it in the fragment.
function redact(text) {
  let out = String(text).replace(/\u001b\[[0-9;]*m/g, '');
  const token = process.env.DASH_TOKEN;
  if (token) {
    for (const form of [token, encodeURIComponent(token)]) out = out.split(form).join('<token>');
  }
  return out;
}

async function main() {
  let page = null;
  let browser = null;
  let out = process.env.DASH_OUT || '.';
  const problems = []; // page errors and CSP violations
  const seen = { states: {}, alerts: [], updated: null, delivered_before: null, delivered_after: null, job: null, console_errors: [] };
  let step = 'setup';
  const watchdog = setTimeout(() => {
    process.stderr.write(`dashboard check: overall timeout during step "${step}"\n`);
    process.exit(1);
  }, STEP_MS * 8 + 30000);
  try {
    const url = env('DASH_URL');
    const token = env('DASH_TOKEN');
    out = env('DASH_OUT');
    const expect = JSON.parse(env('DASH_EXPECT'));
    fs.mkdirSync(out, { recursive: true });
    const { chromium } = loadPlaywright();

    step = 'launch chromium';
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox'],
    });
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (err) => problems.push(`uncaught error in page: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      const text = msg.text();
      if (text.includes(token)) problems.push('the token was written to the console');
      if (/Content Security Policy/i.test(text)) problems.push(`CSP violation: ${text}`);
      else seen.console_errors.push(text);
    });
    page.on('request', (req) => {
      if (req.url().includes(encodeURIComponent(token)) || req.url().includes(token)) {
        problems.push(`the token appeared in a request URL: ${req.method()} ${new URL(req.url()).pathname}`);
      }
    });

    // Evaluates fn(arg) in the page until it returns a truthy value; on timeout throws
    // `what` plus what the page showed (describe(arg), also evaluated in the page).
    async function waitFor(what, fn, arg, describe) {
      try {
        return await (await page.waitForFunction(fn, arg, { timeout: STEP_MS, polling: 100 })).jsonValue();
      } catch (err) {
        let shown = '';
        if (describe) shown = await page.evaluate(describe, arg).catch(() => '');
        throw new Error(`${what} (waited ${STEP_MS} ms)${shown ? '; page shows: ' + shown : ''}` +
          (/Timeout/.test(err.message) ? '' : `; ${err.message}`));
      }
    }
    // Waits for the #dead-letters row of (consumer, eventId); returns its locator.
    async function deadLetterRow(consumer, eventId) {
      await waitFor(`a row for ${eventId} (${consumer}) should appear in #dead-letters`,
        ([c, e]) => !![...document.querySelectorAll('#dead-letters tr[data-entry-id]')]
          .find((r) => r.dataset.eventId === e && r.dataset.consumer === c),
        [consumer, eventId],
        () => [...document.querySelectorAll('#dead-letters tr[data-entry-id]')]
          .map((r) => `${r.dataset.consumer}:${r.dataset.eventId}`).join(', ') || 'empty table');
      const quoted = (value) => value.replace(/["\\]/g, '\\$&');
      return page.locator('#dead-letters tr[data-entry-id]')
        .and(page.locator(`[data-event-id="${quoted(eventId)}"]`))
        .and(page.locator(`[data-consumer="${quoted(consumer)}"]`));
    }
    const delivered = (name) => page.evaluate((n) => {
      const row = [...document.querySelectorAll('#consumers [data-consumer]')].find((r) => r.dataset.consumer === n);
      const cell = row && row.querySelector('[data-field=delivered]');
      return cell && cell.dataset.value !== '' ? Number(cell.dataset.value) : null;
    }, name);

    step = 'open the page';
    const res = await page.goto(`${url}#token=${encodeURIComponent(token)}`, { waitUntil: 'load' });
    if (!res || !res.ok()) throw new Error(`GET ${url} answered ${res ? res.status() : 'nothing'}`);

    step = 'token removed from the address bar';
    const href = await page.evaluate(() => location.href);
    const now = new URL(href);
    if (now.hash !== '' || now.search.includes('token') || href.includes(encodeURIComponent(token)) || page.url().includes('token=')) {
      throw new Error(`the token is still in the address bar: ${now.origin}${now.pathname}${now.search ? '?…' : ''}${now.hash ? '#…' : ''}`);
    }

    step = 'consumer states';
    for (const [name, state] of Object.entries(expect.states || {})) {
      await waitFor(`consumer ${name} should show state "${state}"`, ([n, s]) => {
        const row = [...document.querySelectorAll('#consumers [data-consumer]')].find((r) => r.dataset.consumer === n);
        const cell = row && row.querySelector('[data-field=state]');
        return !!cell && cell.textContent.trim() === s;
      }, [name, state], ([n]) => {
        const row = [...document.querySelectorAll('#consumers [data-consumer]')].find((r) => r.dataset.consumer === n);
        const banner = document.querySelector('#banner');
        const err = banner && !banner.hidden ? ` (error banner: ${banner.textContent})` : '';
        if (!row) return `no row for ${n}; rows: ${[...document.querySelectorAll('#consumers [data-consumer]')].map((r) => r.dataset.consumer).join(', ') || 'none'}${err}`;
        return `state "${row.querySelector('[data-field=state]').textContent}"${err}`;
      });
    }

    if (expect.alert) {
      step = 'active alert';
      await waitFor(`an active alert with data-rule="${expect.alert}" should appear in #alerts`,
        (rule) => [...document.querySelectorAll('#alerts [data-rule]')].some((a) => a.dataset.rule === rule),
        expect.alert,
        () => [...document.querySelectorAll('#alerts [data-rule]')].map((a) => a.dataset.rule).join(', ') || 'no active alerts');
    }
    seen.states = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#consumers [data-consumer]')]
      .map((r) => [r.dataset.consumer, r.querySelector('[data-field=state]').textContent.trim()])));
    seen.alerts = await page.evaluate(() => [...document.querySelectorAll('#alerts [data-rule]')].map((a) => a.dataset.rule));
    seen.updated = await page.evaluate(() => document.querySelector('#updated').textContent);
    await page.screenshot({ path: path.join(out, 'dashboard.png'), fullPage: true });

    if (expect.discard) {
      const { consumer, event_id: eventId } = expect.discard;
      step = 'discard dry run';
      const row = await deadLetterRow(consumer, eventId);
      const shownId = (await row.locator('[data-field=id]').textContent() || '').trim();
      const entryId = await row.getAttribute('data-entry-id');
      if (shownId !== entryId) throw new Error(`the row shows id "${shownId}", its entry is ${entryId}`);
      seen.discarded_id = Number(entryId);
      await row.locator('button[data-action=discard]').click();
      await waitFor('the confirm dialog (dialog#confirm) should open after Discard',
        () => document.querySelector('dialog#confirm')?.open === true, null,
        () => { const b = document.querySelector('#banner'); return b && !b.hidden ? `error banner: ${b.textContent}` : 'dialog closed'; });
      const want = `1 entry of ${consumer} would be deleted for good, never delivered: ${eventId}`;
      const text = (await page.locator('#confirm-text').textContent() || '').trim();
      if (text !== want) throw new Error(`confirm dialog says "${text}", expected "${want}"`);
      const title = (await page.locator('#confirm-title').textContent() || '').trim();
      if (title !== 'Discard parked entry?') throw new Error(`confirm dialog titled "${title}"`);

      step = 'discard confirm';
      await page.locator('#confirm-yes').click();
      await waitFor(`the row for ${eventId} should leave #dead-letters after the discard`,
        ([c, e]) => ![...document.querySelectorAll('#dead-letters tr[data-entry-id]')]
          .some((r) => r.dataset.eventId === e && r.dataset.consumer === c),
        [consumer, eventId],
        () => (document.querySelector('#confirm-status') || {}).textContent || '?');
      seen.discard_status = (await page.locator('#confirm-status').textContent() || '').trim();
      if (await page.locator('dialog#confirm').evaluate((d) => d.open)) await page.locator('#confirm-no').click();
    }

    if (expect.replay) {
      const { consumer, event_id: eventId } = expect.replay;
      step = 'dead-letter row';
      const row = await deadLetterRow(consumer, eventId);
      seen.delivered_before = await delivered(consumer);
      if (seen.delivered_before == null) throw new Error(`consumer ${consumer} shows no delivered count`);

      step = 'replay dry run';
      await row.locator('button[data-action=replay]').click();
      await waitFor('the confirm dialog (dialog#confirm) should open after Replay',
        () => document.querySelector('dialog#confirm')?.open === true, null,
        () => { const b = document.querySelector('#banner'); return b && !b.hidden ? `error banner: ${b.textContent}` : 'dialog closed'; });
      const want = `1 entry would go back to ${consumer}: ${eventId}`;
      const text = (await page.locator('#confirm-text').textContent() || '').trim();
      if (text !== want) throw new Error(`confirm dialog says "${text}", expected "${want}"`);
      await page.screenshot({ path: path.join(out, 'dashboard-confirm.png'), fullPage: true });

      step = 'replay confirm';
      await page.locator('#confirm-yes').click();
      await waitFor(`the row for ${eventId} should leave #dead-letters after the replay`,
        ([c, e]) => ![...document.querySelectorAll('#dead-letters tr[data-entry-id]')]
          .some((r) => r.dataset.eventId === e && r.dataset.consumer === c),
        [consumer, eventId],
        () => {
          const s = document.querySelector('#confirm-status');
          const b = document.querySelector('#banner');
          return `job: ${s ? s.textContent : '?'}${b && !b.hidden ? `; error banner: ${b.textContent}` : ''}`;
        });
      await waitFor(`delivered for ${consumer} should rise above ${seen.delivered_before}`,
        ([n, before]) => {
          const row = [...document.querySelectorAll('#consumers [data-consumer]')].find((r) => r.dataset.consumer === n);
          const cell = row && row.querySelector('[data-field=delivered]');
          return !!cell && cell.dataset.value !== '' && Number(cell.dataset.value) > before;
        }, [consumer, seen.delivered_before],
        ([n]) => {
          const row = [...document.querySelectorAll('#consumers [data-consumer]')].find((r) => r.dataset.consumer === n);
          return `delivered ${row ? row.querySelector('[data-field=delivered]').textContent : '(no row)'}`;
        });
      seen.delivered_after = await delivered(consumer);
      seen.job = (await page.locator('#confirm-status').textContent() || '').trim();
      if (await page.locator('dialog#confirm').evaluate((d) => d.open)) await page.locator('#confirm-no').click();
      await page.screenshot({ path: path.join(out, 'dashboard-after.png'), fullPage: true });
    }

    step = 'page health';
    if (problems.length) throw new Error(problems.join('\n'));
    process.stdout.write(redact(JSON.stringify(seen)) + '\n');
    clearTimeout(watchdog);
    await browser.close();
    return 0;
  } catch (err) {
    if (page) {
      await page.screenshot({ path: path.join(out, 'dashboard-failure.png'), fullPage: true }).catch(() => {});
    }
    const extra = problems.length ? `\nalso: ${problems.join('\n')}` : '';
    process.stderr.write(redact(`dashboard check failed at step "${step}": ${err.message}${extra}`) + '\n');
    clearTimeout(watchdog);
    if (browser) await browser.close().catch(() => {});
    return 1;
  }
}

main().then((code) => process.exit(code));
