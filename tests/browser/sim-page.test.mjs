// End-to-end test of the DOKU simulator's page in a real headless Chromium (Debian's
// `chromium`, driven by playwright-core), against a live `o2o-sidecar dev` on free ports:
//
//  1. a payment created through the sidecar's gRPC API appears on the page; its Pay button
//     is clicked and the PAID event arrives on a StreamNotifications stream opened before;
//     its delivery shows HTTP 200, and Resend sends it again (the sidecar emits no second event);
//  2. a second payment is paid at the counter by typing its payment code;
//  3. a third is expired with its Expire button and the page shows EXPIRED; the counter then
//     refuses its code, and an unknown code is refused too;
//  4. a fourth is failed with Fail (FAILED event); a fault is added and cleared with the form;
//     an Alfa Group payment shows as such in the Channel column and on its how-to-pay page;
//  5. labels, phone width, no console errors; the served OpenAPI document is the repository's.
//
// Screenshots (desktop, phone, how-to-pay) go to $SCREENSHOT_DIR (default: a temporary
// directory); `SCREENSHOT_DIR=docs bash scripts/check-browser.sh` refreshes the ones in docs/.
// Run by scripts/check-browser.sh; exits non-zero on any failed step.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const bin = process.env.O2O_SIDECAR_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, 'target'), 'debug', 'o2o-sidecar');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
/** Upper bound for anything the test waits for; reached only when something is broken. */
const PATIENCE_MS = 20_000;

const work = mkdtempSync(path.join(tmpdir(), 'o2o-browser-'));
const shots = process.env.SCREENSHOT_DIR ? path.resolve(repo, process.env.SCREENSHOT_DIR) : work;
mkdirSync(shots, { recursive: true });
const started = Date.now();
const log = [];
let dev;
let browser;
let stream;
let page;

function step(msg) {
  console.log(`ok: ${msg} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

// ---------- o2o-sidecar dev on port 0 ----------

const ANSI = /\x1b\[[0-9;]*m/g;

/** Starts `o2o-sidecar dev` with every listener on port 0; resolves with the bound addresses
 * read from its log line and banner (no sleeps: the lines are awaited as they are written). */
function startDev() {
  return new Promise((resolve, reject) => {
    dev = spawn(bin, [
      'dev',
      '--grpc-addr', '127.0.0.1:0', '--http-addr', '127.0.0.1:0', '--admin-addr', '127.0.0.1:0',
      '--sim-addr', '127.0.0.1:0', '--store', `sqlite://${path.join(work, 'o2o.db')}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const found = {};
    const timer = setTimeout(() => reject(new Error('o2o-sidecar dev did not start in time')), 60_000);
    const check = () => {
      if (found.grpc && found.page) {
        clearTimeout(timer);
        resolve(found);
      }
    };
    createInterface({ input: dev.stdout }).on('line', (raw) => {
      const line = raw.replace(ANSI, '');
      log.push(line);
      const m = line.match(/^\s*simulator page\s+(http:\/\/\S+?)\/?\s/);
      if (m) found.page = m[1];
      check();
    });
    createInterface({ input: dev.stderr }).on('line', (raw) => {
      const line = raw.replace(ANSI, '');
      log.push(line);
      const m = line.match(/o2o-sidecar serving grpc_addr=(\S+)/);
      if (m) found.grpc = m[1];
      check();
    });
    dev.on('error', (e) => reject(new Error(`cannot start ${bin}: ${e.message}`)));
    dev.on('exit', (code, signal) => reject(new Error(`o2o-sidecar dev exited early (${code ?? signal})`)));
  });
}

// ---------- gRPC ----------

function grpcClient(addr) {
  const def = protoLoader.loadSync(path.join(repo, 'proto/o2o/v1/o2o_payments.proto'), {
    includeDirs: [path.join(repo, 'proto')],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const pkg = grpc.loadPackageDefinition(def);
  return new pkg.o2o.v1.O2OPayments(addr, grpc.credentials.createInsecure());
}

function unary(client, method, req) {
  return new Promise((resolve, reject) => {
    client[method](req, { deadline: Date.now() + PATIENCE_MS }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** Opens StreamNotifications and resolves once the server sent its headers: the sidecar
 * subscribes to live events before it answers, so nothing published later can be missed. */
function openStream(client) {
  return new Promise((resolve, reject) => {
    const call = client.StreamNotifications({});
    const events = [];
    const waiters = [];
    call.on('data', (msg) => {
      events.push(msg.notification);
      for (const w of [...waiters]) w();
    });
    call.on('error', (e) => {
      if (e.code !== grpc.status.CANCELLED) reject(e);
    });
    call.on('metadata', () =>
      resolve({
        call,
        events,
        /** Resolves with the first event matching `pred` (already received or to come). */
        waitFor(pred, what) {
          return new Promise((res, rej) => {
            const t = setTimeout(() => rej(new Error(`no ${what} on the stream within ${PATIENCE_MS} ms; got ${JSON.stringify(events)}`)), PATIENCE_MS);
            const w = () => {
              const e = events.find(pred);
              if (e) {
                clearTimeout(t);
                waiters.splice(waiters.indexOf(w), 1);
                res(e);
              }
            };
            waiters.push(w);
            w();
          });
        },
      }),
    );
  });
}

// ---------- the test ----------

async function main() {
  const addrs = await startDev();
  step(`o2o-sidecar dev started: gRPC ${addrs.grpc}, simulator page ${addrs.page}/`);

  // The served OpenAPI document is the repository's (scripts/check-browser.sh validates it).
  const served = await (await fetch(`${addrs.page}/_sim/openapi.json`)).json();
  assert.deepEqual(served, JSON.parse(readFileSync(path.join(repo, 'src/sim/openapi.json'), 'utf8')));
  step('GET /_sim/openapi.json serves src/sim/openapi.json');

  const client = grpcClient(addrs.grpc);
  stream = await openStream(client);
  step('StreamNotifications is open');

  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-US', timezoneId: 'Asia/Jakarta' });
  context.setDefaultTimeout(PATIENCE_MS);
  page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    // The unknown code's lookup is answered 404 on purpose; Chromium logs every 404.
    const expected = m.text().includes('404') && m.location().url.includes('/_sim/codes/7731000000000000');
    if (m.type() === 'error' && !expected) problems.push(`console: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await page.goto(`${addrs.page}/`);
  await page.getByRole('status').filter({ hasText: 'Live' }).waitFor();
  step('the page loaded and polls /_sim/state');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to the counter');
  await page.keyboard.press('Enter');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'counter-code', 'the skip link leads to the code field');
  step('keyboard: the first Tab reaches the skip link, which leads to the counter');

  const run = Date.now().toString(36).toUpperCase();
  const generate = async (suffix, amount, name, channel = 'CHANNEL_INDOMARET') => {
    const res = await unary(client, 'GeneratePaymentCode', {
      invoice_number: `INV-${run}-${suffix}`,
      amount: String(amount),
      customer: { name },
      info: `Order ${suffix}`,
      channel,
    });
    assert.equal(res.payment.channel, channel);
    assert.equal(res.payment.status, 'PAYMENT_STATUS_PENDING');
    assert.match(res.payment.payment_code, /^\d+$/);
    return res.payment;
  };
  const rowOf = (invoice) =>
    page.getByRole('row').filter({ has: page.getByRole('rowheader', { name: invoice, exact: true }) });
  const paidOn = (invoice) => (e) => e.invoice_number === invoice && e.status === 'PAYMENT_STATUS_PAID';

  // 1. Pay with the row's Pay button.
  const a = await generate('A', 150000, 'Budi Santoso');
  const rowA = rowOf(a.invoice_number);
  await rowA.waitFor();
  await rowA.getByText('PENDING', { exact: true }).waitFor();
  await rowA.getByText(a.payment_code, { exact: true }).waitFor();
  await rowA.getByText('Rp\u00a0150.000').waitFor();
  await rowA.getByRole('cell', { name: 'Indomaret', exact: true }).waitFor();
  assert.equal(await rowA.getByRole('button').count(), 3, 'a pending payment has Pay, Expire and Fail');
  step(`${a.invoice_number} appeared on the page (code ${a.payment_code})`);
  await rowA.getByRole('button', { name: 'Pay', exact: true }).click();
  const eventA = await stream.waitFor(paidOn(a.invoice_number), `PAID event for ${a.invoice_number}`);
  assert.equal(eventA.amount, '150000');
  assert.equal(eventA.payment_code, a.payment_code);
  assert.equal(eventA.source, 'SOURCE_DOKU_NOTIFICATION');
  step(`clicked Pay: PAID event ${eventA.event_id} arrived on the stream`);
  await rowA.getByText('SUCCESS', { exact: true }).waitFor();
  assert.equal(await rowA.getByRole('button', { name: 'Pay', exact: true }).count(), 0, 'a paid code has no Pay button');
  const deliveriesA = page.getByRole('article', { name: `Invoice ${a.invoice_number}` });
  await deliveriesA.getByText('delivered', { exact: true }).waitFor();
  await deliveriesA.getByText(/HTTP 200/).waitFor();
  step('the delivery shows HTTP 200, delivered');

  await deliveriesA.getByRole('button', { name: 'Resend', exact: true }).click();
  await deliveriesA.getByText('resend', { exact: true }).waitFor();
  await deliveriesA.getByText('delivered', { exact: true }).nth(1).waitFor();
  step('Resend: a second delivery, HTTP 200');

  // 2. Pay at the counter by typing the code (keyboard: Enter submits).
  const b = await generate('B', 250000, 'Siti Rahayu');
  const counter = page.getByRole('region', { name: 'Counter' });
  const codeInput = counter.getByLabel('Payment code');
  await codeInput.fill(b.payment_code);
  await codeInput.press('Enter');
  const till = counter.getByRole('group', { name: `Payment code ${b.payment_code}` });
  await till.getByText(b.invoice_number, { exact: true }).waitFor();
  await till.getByText('Rp\u00a0250.000').waitFor();
  await till.getByText('Siti Rahayu').waitFor();
  step(`counter inquiry for ${b.payment_code} shows ${b.invoice_number}, Rp 250.000`);
  await till.getByRole('button', { name: 'Pay', exact: true }).click();
  await stream.waitFor(paidOn(b.invoice_number), `PAID event for ${b.invoice_number}`);
  await counter.getByText(`Paid Rp\u00a0250.000 for invoice ${b.invoice_number}`, { exact: false }).waitFor();
  await rowOf(b.invoice_number).getByText('SUCCESS', { exact: true }).waitFor();
  step('paid at the counter: PAID event arrived');

  // The resend of A was answered 200 before B was paid, and the stream is ordered: a second
  // event for A would have arrived before B's.
  assert.equal(stream.events.filter(paidOn(a.invoice_number)).length, 1, 'the resent notification is not a second event');

  await codeInput.fill('7731000000000000');
  await codeInput.press('Enter');
  await counter.getByText('Unknown payment code 7731000000000000').waitFor();
  step('an unknown code is refused at the counter');

  // 3. Expire.
  const c = await generate('C', 75000, 'Agus Wijaya');
  const rowC = rowOf(c.invoice_number);
  await rowC.getByRole('button', { name: 'Expire', exact: true }).click();
  await rowC.getByText('EXPIRED', { exact: true }).waitFor();
  assert.equal(await rowC.getByRole('button').count(), 0, 'an expired code has no actions');
  step(`clicked Expire: ${c.invoice_number} shows EXPIRED`);
  await codeInput.fill(c.payment_code);
  await codeInput.press('Enter');
  await counter.getByText(`Payment code ${c.payment_code} has expired`).waitFor();
  step('the counter refuses the expired code');
  const status = await unary(client, 'GetStatus', { invoice_number: c.invoice_number, refresh: true });
  assert.equal(status.payment.status, 'PAYMENT_STATUS_EXPIRED');
  step('GetStatus(refresh) reads EXPIRED through Check Status');

  // 4. Fail, and a fault through the form.
  const d = await generate('D', 320000, 'Dewi Lestari');
  await rowOf(d.invoice_number).getByRole('button', { name: 'Fail', exact: true }).click();
  await stream.waitFor((e) => e.invoice_number === d.invoice_number && e.status === 'PAYMENT_STATUS_FAILED', `FAILED event for ${d.invoice_number}`);
  await rowOf(d.invoice_number).getByText('FAILED', { exact: true }).waitFor();
  step('clicked Fail: FAILED event arrived');
  await generate('E', 99000, 'Rina Kusuma'); // left pending for the screenshots
  // To be paid at an Alfa Group store: the Channel column says so.
  const alfa = await generate('F', 45000, 'Yusuf Hidayat', 'CHANNEL_ALFA');
  await rowOf(alfa.invoice_number).getByRole('cell', { name: 'Alfa Group', exact: true }).waitFor();
  step(`${alfa.invoice_number} (CHANNEL_ALFA) shows Alfa Group in the Channel column`);

  const faults = page.getByRole('region', { name: 'Faults' });
  await faults.getByLabel('Target').selectOption('payment_code');
  await faults.getByLabel('Kind').selectOption('status');
  await faults.getByLabel('HTTP status').fill('503');
  await faults.getByLabel('Times').fill('2');
  await faults.getByRole('button', { name: 'Add fault', exact: true }).click();
  const faultRow = faults.getByRole('row').filter({ hasText: 'HTTP 503' });
  await faultRow.getByText('Generate Payment Code').waitFor();
  await faults.getByLabel('Target').selectOption('notification');
  await faults.getByLabel('Kind').selectOption('duplicate');
  await faults.getByRole('button', { name: 'Add fault', exact: true }).click();
  await faults.getByRole('row').filter({ hasText: 'Duplicate' }).waitFor();
  const active = await (await fetch(`${addrs.page}/_sim/faults`)).json();
  assert.deepEqual(active, [
    { target: 'payment_code', kind: 'status', status: 503, times: 2 },
    { target: 'notification', kind: 'duplicate', times: 2 },
  ]);
  step('two faults added through the form');

  // 5. Accessibility basics, then the screenshots.
  for (const control of await page.locator('main input, main select').all()) {
    const labelled = await control.evaluate((e) => e.labels.length > 0 || e.hasAttribute('aria-label'));
    assert.ok(labelled, `unlabelled control: ${await control.evaluate((e) => e.outerHTML)}`);
  }
  for (const button of await page.getByRole('button').all()) {
    assert.notEqual((await button.textContent()).trim(), '', 'a button has no name');
  }
  step('every control is labelled, every button named');

  await page.evaluate(() => document.activeElement?.blur());
  await page.screenshot({ path: path.join(shots, 'simulator-desktop.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const wide = await page.evaluate(() =>
    [...document.querySelectorAll('body *')]
      .filter((n) => (n.getBoundingClientRect().right > window.innerWidth || n.scrollWidth > n.clientWidth) && !n.closest("thead"))
      .slice(0, 8)
      .map((n) => `${n.tagName}#${n.id}.${n.className} right=${n.getBoundingClientRect().right} sw=${n.scrollWidth} cw=${n.clientWidth}`)
      .concat([`html sw=${document.documentElement.scrollWidth} cw=${document.documentElement.clientWidth} iw=${window.innerWidth}`]));
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at phone width: ${wide.join('; ')}`);
  await page.screenshot({ path: path.join(shots, 'simulator-phone.png'), fullPage: true });
  step('no sideways scrolling at 390 px; screenshots taken');

  await faults.getByRole('button', { name: 'Clear all faults', exact: true }).click();
  await faults.getByText('None: DOKU behaves.').waitFor();
  assert.deepEqual(await (await fetch(`${addrs.page}/_sim/faults`)).json(), []);
  step('Clear all faults');

  // The how-to-pay page for the pending payment, as a customer sees it on a phone.
  const e = (await (await fetch(`${addrs.page}/_sim/payments`)).json()).find((p) => p.invoice_number.endsWith('-E'));
  await page.goto(e.how_to_pay_url);
  await page.getByRole('heading', { name: 'Pay at Indomaret' }).waitFor();
  const shown = (await page.locator('.htp-code').textContent()).replace(/\s/g, '');
  assert.equal(shown, e.payment_code);
  const codeSize = await page.locator('.htp-code').evaluate((n) => parseFloat(getComputedStyle(n).fontSize));
  assert.ok(codeSize >= 28, `the code is shown large (${codeSize}px)`);
  await page.screenshot({ path: path.join(shots, 'simulator-how-to-pay.png'), fullPage: true });
  await page.getByRole('link', { name: 'Pay this code at the simulated counter' }).click();
  await page.getByRole('region', { name: 'Counter' }).getByRole('group', { name: `Payment code ${e.payment_code}` }).waitFor();
  step('how-to-pay page: code shown large; its link opens the counter with the code looked up');
  await page.goto(alfa.how_to_pay_url);
  await page.getByRole('heading', { name: 'Pay at Alfa Group' }).waitFor();
  await page.getByText('Go to the nearest Alfamart, Alfamidi, Lawson or Dan+Dan store.').waitFor();
  assert.match(alfa.how_to_pay_url, /\/how-to-pay\/v2\/alfa-online-to-offline\//);
  step("the Alfa payment's how-to-pay page names Alfa Group's stores");

  assert.deepEqual(problems, [], 'the browser reported errors');
  step(`all checks passed; screenshots in ${shots}`);
}

async function cleanup() {
  stream?.call.cancel();
  await browser?.close().catch(() => {});
  if (dev && dev.exitCode === null) {
    dev.removeAllListeners('exit');
    const exited = new Promise((r) => dev.once('exit', r));
    dev.kill('SIGTERM');
    await exited;
  }
  rmSync(work, { recursive: true, force: true });
}

try {
  await main();
  await cleanup();
  console.log(`browser test: passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  process.exit(0);
} catch (e) {
  console.error(`browser test FAILED: ${e.stack || e}`);
  if (page) {
    const texts = await page
      .evaluate(() => ['message', 'inquiry', 'live'].map((id) => `#${id}: ${document.getElementById(id)?.innerText}`))
      .catch(() => []);
    console.error(`--- the page ---\n${texts.join('\n')}`);
  }
  console.error('--- o2o-sidecar dev output (last 60 lines) ---');
  console.error(log.slice(-60).join('\n'));
  await cleanup().catch(() => {});
  process.exit(1);
}
