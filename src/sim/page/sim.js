// The DOKU simulator's control page. It polls GET /_sim/state every second and acts only
// through the JSON control API (/_sim/...), so it can do nothing a script cannot. Rows are
// rebuilt only when their data changed, and focus is kept on the same control across a
// rebuild, so the page stays usable from the keyboard while it updates.
'use strict';

const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;

const FAULT_KINDS = {
  payment_code: ['status', 'delay', 'drop'],
  alfa_payment_code: ['status', 'delay', 'drop'],
  check_status: ['status', 'delay', 'drop'],
  notification: ['suppress', 'duplicate', 'bad_signature', 'delay'],
};
const KIND_LABELS = {
  status: 'Error status',
  delay: 'Delay',
  drop: 'Dropped connection',
  suppress: 'Suppress (never sent)',
  duplicate: 'Duplicate (sent twice)',
  bad_signature: 'Bad signature',
};
const KIND_HINTS = {
  status: 'DOKU answers this HTTP status with a DOKU-style error body, without processing.',
  delay: 'DOKU endpoints: process, then wait before answering (the sidecar may time out after DOKU acted). Notifications: a late first attempt.',
  drop: 'DOKU closes the connection without answering.',
  suppress: 'No notification is sent (only Check Status can find the payment).',
  duplicate: 'The same notification (same Request-Id and body) is sent twice.',
  bad_signature: 'The notification carries a signature that does not verify.',
};
const TARGET_LABELS = {
  payment_code: 'Generate Payment Code (Indomaret)',
  alfa_payment_code: 'Generate Payment Code (Alfa Group)',
  check_status: 'Check Status',
  notification: 'Notifications',
};

// ---------- small DOM helpers ----------

function $(id) {
  return document.getElementById(id);
}

// el('p', {class: 'x', text: 'hi', data: {k: 'v'}, onclick: fn}, child, 'text', ...)
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k === 'class') node.className = v;
    else if (k === 'data') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const rupiah = new Intl.NumberFormat('id-ID');
function money(n) {
  return 'Rp\u00a0' + rupiah.format(n);
}

function when(iso, withMs) {
  if (!iso) return '';
  const d = new Date(iso);
  const opts = { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' };
  if (new Date(iso).getFullYear() !== new Date().getFullYear()) opts.year = 'numeric';
  if (withMs) opts.fractionalSecondDigits = 3;
  return d.toLocaleString(undefined, opts);
}

function timeEl(iso, withMs) {
  return el('time', { datetime: iso, text: when(iso, withMs) });
}

function span(ms) {
  if (ms === null || ms === undefined) return 'never';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${+s.toFixed(1)} s`;
  const m = s / 60;
  if (m < 60) return `${+m.toFixed(1)} min`;
  return `${+(m / 60).toFixed(1)} h`;
}

// Keeps `container`'s children in the order of `items`, one per key; a child is rebuilt only
// when its item changed. Focus inside a rebuilt child moves to the control with the same
// data-focus in the new one, else to the new child's first control, else its heading.
function sync(container, items, keyOf, build) {
  const old = new Map();
  for (const node of container.children) old.set(node.dataset.key, node);
  const active = document.activeElement;
  let prev = null;
  for (const item of items) {
    const key = keyOf(item);
    const sig = JSON.stringify(item);
    let node = old.get(key);
    old.delete(key);
    if (!node || node.dataset.sig !== sig) {
      const fresh = build(item);
      fresh.dataset.key = key;
      fresh.dataset.sig = sig;
      const hadFocus = node && node.contains(active) ? active : null;
      if (node) node.replaceWith(fresh);
      node = fresh;
      if (hadFocus) refocus(node, hadFocus.dataset.focus);
    }
    const want = prev ? prev.nextElementSibling : container.firstElementChild;
    if (node !== want) container.insertBefore(node, want);
    prev = node;
  }
  for (const node of old.values()) {
    const hadFocus = node.contains(active);
    node.remove();
    if (hadFocus) {
      const h = container.closest('section')?.querySelector('h2');
      if (h) {
        h.tabIndex = -1;
        h.focus();
      }
    }
  }
}

function refocus(node, focusKey) {
  const target =
    (focusKey && node.querySelector(`[data-focus="${CSS.escape(focusKey)}"]`)) ||
    node.querySelector('button, a[href], input, select') ||
    node.querySelector('th, h3');
  if (!target) return;
  if (!target.matches('button, a[href], input, select')) target.tabIndex = -1;
  target.focus();
}

// ---------- talking to the control API ----------

async function api(method, path, body) {
  const init = { method, headers: {}, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const err = new Error((json && json.error) || `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return json;
}

function say(text, ok) {
  const m = $('message');
  m.textContent = text;
  m.className = 'message ' + (ok ? 'ok' : 'err');
}

// Runs `fn` for a button press, once at a time per button, then refreshes the page.
async function press(button, fn) {
  if (button.getAttribute('aria-busy') === 'true') return;
  button.setAttribute('aria-busy', 'true');
  try {
    await fn();
  } catch (e) {
    say(e.message, false);
  } finally {
    button.removeAttribute('aria-busy');
    refresh();
  }
}

function enc(s) {
  return encodeURIComponent(s);
}

const ACTIONS = {
  pay: {
    label: 'Pay',
    done: (inv, out) =>
      out && out.notification_request_id
        ? `${inv}: paid; DOKU's notification ${out.notification_request_id} is on its way.`
        : `${inv}: paid; no notification URL is configured, so none is sent.`,
  },
  expire: { label: 'Expire', done: (inv) => `${inv}: expired (DOKU sends no notification for this).` },
  fail: {
    label: 'Fail',
    cls: 'danger',
    done: (inv, out) =>
      out && out.notification_request_id
        ? `${inv}: failed; a FAILED notification ${out.notification_request_id} is on its way.`
        : `${inv}: failed.`,
  },
};

function actionButton(p, action) {
  const a = ACTIONS[action];
  const b = el('button', {
    type: 'button',
    class: a.cls || (action === 'pay' ? '' : 'secondary'),
    text: a.label,
    data: { focus: action },
    'aria-describedby': `inv-${p.invoice_number}`,
  });
  b.addEventListener('click', () =>
    press(b, async () => {
      const out = await api('POST', `/_sim/payments/${enc(p.invoice_number)}/${action}`);
      say(a.done(p.invoice_number, out), true);
    }),
  );
  return b;
}

// ---------- rendering ----------

function renderPayments(payments) {
  const newest = [...payments].reverse();
  $('payments-empty').hidden = newest.length > 0;
  $('payments-table').hidden = newest.length === 0;
  sync($('payments-body'), newest, (p) => p.invoice_number, (p) => {
    const actions = el('td', { role: 'cell', 'data-label': 'Actions' },
      el('div', { class: 'actions' },
        p.actions.map((a) => actionButton(p, a)),
        el('a', { href: p.how_to_pay_url, text: 'How to pay', data: { focus: 'how-to-pay' } })));
    const status = el('span', { class: `status status-${p.status}`, text: p.status });
    const extra = [];
    if (p.reusable) extra.push(el('span', { class: 'tag', text: 'reusable' }));
    if (p.pay_count > 1) extra.push(el('span', { class: 'tag', text: `paid ${p.pay_count}×` }));
    return el('tr', { role: 'row', data: { invoice: p.invoice_number } },
      el('th', { scope: 'row', role: 'rowheader', id: `inv-${p.invoice_number}`, text: p.invoice_number }),
      el('td', { role: 'cell', 'data-label': 'Channel', text: p.channel_name }),
      el('td', { role: 'cell', class: 'num', 'data-label': 'Amount', text: money(p.amount) }),
      el('td', { role: 'cell', class: 'code', 'data-label': 'Payment code', text: p.payment_code }),
      el('td', { role: 'cell', class: 'status-cell', 'data-label': 'Status' }, status, extra),
      el('td', { role: 'cell', 'data-label': 'Expires' }, timeEl(p.expires_at)),
      actions);
  });
}

function deliveryState(d) {
  if (d.suppressed) return el('span', { class: 'state-bad', text: 'suppressed by a fault: not sent' });
  if (d.delivered) return el('span', { class: 'state-ok', text: 'delivered' });
  if (d.next_attempt_at) {
    const what = d.attempts === 0 ? 'first attempt' : `retry ${d.attempts} of 3`;
    return el('span', { class: 'state-wait' }, `${what} due `, timeEl(d.next_attempt_at));
  }
  if (d.attempts > 0) return el('span', { class: 'state-bad', text: `not delivered: DOKU gave up after ${d.attempts} attempts` });
  return el('span', { class: 'state-wait', text: 'waiting' });
}

function renderDelivery(d, i) {
  const tags = [];
  if (d.resend) tags.push(el('span', { class: 'tag', text: 'resend' }));
  if (d.duplicate) tags.push(el('span', { class: 'tag', text: 'duplicate' }));
  if (d.bad_signature) tags.push(el('span', { class: 'tag', text: 'bad signature' }));
  const attempts = d.history.map((a) =>
    el('li', {},
      timeEl(a.at, true), ' → ',
      a.status !== null && a.status !== undefined ? `HTTP ${a.status}` : `no answer (${a.error || 'error'})`,
      ` in ${span(a.duration_ms)}`));
  return el('li', { class: 'delivery', data: { request: d.request_id, index: String(i) } },
    el('p', {}, el('b', { text: d.status }), ' notification ', el('code', { text: d.request_id }), tags),
    el('p', { class: 'small' }, 'to ', el('code', { text: d.url }), ' · planned ', timeEl(d.created_at)),
    attempts.length ? el('ol', { 'aria-label': 'Attempts' }, attempts) : null,
    el('p', {}, deliveryState(d)));
}

function renderDeliveries(state) {
  const groups = new Map();
  state.notifications.forEach((d, i) => {
    if (!groups.has(d.invoice_number)) groups.set(d.invoice_number, []);
    groups.get(d.invoice_number).push([d, i]);
  });
  // Most recently planned first.
  const items = [...groups.entries()]
    .map(([invoice, list]) => ({ invoice, list: list.map(([d, i]) => ({ ...d, i })) }))
    .sort((a, b) => b.list[b.list.length - 1].i - a.list[a.list.length - 1].i);
  $('notifications-empty').hidden = items.length > 0;
  sync($('deliveries'), items, (g) => g.invoice, (g) => {
    const id = `deliveries-${g.invoice}`;
    const resend = el('button', { type: 'button', class: 'secondary', text: 'Resend', data: { focus: 'resend' }, 'aria-describedby': id });
    resend.addEventListener('click', () =>
      press(resend, async () => {
        const out = await api('POST', `/_sim/payments/${enc(g.invoice)}/resend`);
        say(`${g.invoice}: notification ${out.notification_request_id} resent.`, true);
      }),
    );
    return el('article', { class: 'payment-deliveries', 'aria-labelledby': id, data: { invoice: g.invoice } },
      el('header', {}, el('h3', { id, text: `Invoice ${g.invoice}` }), resend),
      el('ul', {}, g.list.map((d) => renderDelivery(d, d.i))));
  });
  const sched = state.config.notification_retry_schedule_ms;
  const retries = sched.slice(1).map(span).join(', ');
  $('schedule').textContent =
    `DOKU sends a notification at once and, until it gets a 2xx, retries ${retries} after the first attempt` +
    (state.config.notification_retry_scale === 1
      ? " (DOKU's own schedule)."
      : ` (DOKU's 30 min, 6 h, 12 h scaled by ${state.config.notification_retry_scale}).`) +
    (state.config.notification_url ? ` Configured Notification URL: ${state.config.notification_url}` : ' No Notification URL is configured.');
}

function faultDetails(f) {
  switch (f.kind) {
    case 'status': return `HTTP ${f.status}`;
    case 'delay': return `${KIND_LABELS.delay} ${span(f.delay_ms)}`;
    case 'drop': return f.after_processing ? 'Dropped after processing' : 'Dropped before processing';
    default: return KIND_LABELS[f.kind] || f.kind;
  }
}

function renderFaults(faults) {
  $('faults-empty').hidden = faults.length > 0;
  $('faults-table').hidden = faults.length === 0;
  $('clear-faults').disabled = faults.length === 0;
  // Faults have no identity of their own: position and content together are the key.
  const items = faults.map((f, i) => ({ ...f, i }));
  sync($('faults-body'), items, (f) => `${f.i}`, (f) =>
    el('tr', { role: 'row' },
      el('td', { role: 'cell', 'data-label': 'Target', text: TARGET_LABELS[f.target] || f.target }),
      el('td', { role: 'cell', 'data-label': 'Kind', text: faultDetails(f) }),
      el('td', { role: 'cell', 'data-label': 'Times left', text: f.times === undefined ? 'until cleared' : String(f.times) }),
      el('td', { role: 'cell', 'data-label': 'Invoice', text: f.invoice_number || 'any' })));
}

function render(state) {
  renderPayments(state.payments);
  renderDeliveries(state);
  renderFaults(state.faults);
}

// ---------- polling ----------

let timer = null;
let asked = 0;
let shown = 0;

async function refresh() {
  clearTimeout(timer);
  const n = ++asked;
  const live = $('live');
  try {
    const state = await api('GET', '/_sim/state');
    // An older poll answering late must not overwrite a newer one.
    if (n > shown) {
      shown = n;
      render(state);
      live.className = 'live up';
      live.textContent = `Live · ${state.payments.length} payment${state.payments.length === 1 ? '' : 's'}`;
    }
  } catch (e) {
    live.className = 'live down';
    live.textContent = `Cannot reach the simulator (${e.message}); retrying`;
  }
  if (n === asked) timer = setTimeout(refresh, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refresh();
});

// ---------- the counter ----------

function tillMessage(text, ok) {
  return el('p', { class: `till-msg ${ok ? 'ok' : 'bad'}`, tabindex: '-1', text });
}

function showInquiry(content) {
  const box = $('inquiry');
  box.replaceChildren(content);
  return content;
}

async function lookUp(code) {
  let q;
  try {
    q = await api('GET', `/_sim/codes/${enc(code)}`);
  } catch (e) {
    if (e.status === 404) {
      showInquiry(tillMessage(`Unknown payment code ${code}: no payment was issued with it.`, false));
      return;
    }
    throw e;
  }
  if (!q.payable) {
    const why = q.status === 'EXPIRED'
      ? `Payment code ${code} has expired (invoice ${q.invoice_number}); it cannot be paid.`
      : q.status === 'FAILED'
        ? `Payment code ${code} has failed (invoice ${q.invoice_number}); it cannot be paid.`
        : `Payment code ${code} is already paid (invoice ${q.invoice_number}).`;
    showInquiry(tillMessage(why, false));
    return;
  }
  const pay = el('button', { type: 'button', text: 'Pay' });
  const cancel = el('button', { type: 'button', class: 'secondary', text: 'Cancel' });
  const facts = [
    ['Merchant', q.merchant],
    ['Invoice', q.invoice_number],
    ['Customer', q.customer_name],
    ['Store', q.channel_name],
    ['Info', q.info],
    ['Pay before', when(q.expires_at)],
  ].filter(([, v]) => v);
  const card = el('div', { class: 'till', role: 'group', 'aria-label': `Payment code ${q.payment_code}` },
    el('dl', {},
      facts.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]),
      el('dt', { text: 'Amount' }), el('dd', { class: 'total', text: money(q.amount) })),
    el('div', { class: 'buttons' }, pay, cancel));
  pay.addEventListener('click', () =>
    press(pay, async () => {
      const out = await api('POST', `/_sim/payments/${enc(q.invoice_number)}/pay`);
      const msg = showInquiry(tillMessage(
        `Paid ${money(q.amount)} for invoice ${q.invoice_number}.` +
          (out.notification_request_id ? ` DOKU's notification ${out.notification_request_id} is on its way.` : ''),
        true));
      msg.focus();
      $('counter-code').value = '';
    }),
  );
  cancel.addEventListener('click', () => {
    $('inquiry').replaceChildren();
    $('counter-code').focus();
  });
  showInquiry(card);
}

$('counter-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('counter-code');
  const code = input.value.replace(/\s+/g, '');
  if (!code) {
    showInquiry(tillMessage('Type the payment code first.', false));
    input.focus();
    return;
  }
  const button = ev.submitter || ev.target.querySelector('button[type=submit]');
  press(button, () => lookUp(code));
});

// ---------- faults ----------

function syncFaultForm() {
  const target = $('fault-target').value;
  const kindSel = $('fault-kind');
  const kinds = FAULT_KINDS[target];
  const current = kindSel.value;
  if ([...kindSel.options].map((o) => o.value).join() !== kinds.join()) {
    kindSel.replaceChildren(...kinds.map((k) => el('option', { value: k, text: KIND_LABELS[k] })));
    if (kinds.includes(current)) kindSel.value = current;
  }
  const kind = kindSel.value;
  for (const label of document.querySelectorAll('#fault-form [data-for]')) {
    label.hidden = label.dataset.for !== kind;
  }
  $('fault-kind-hint').textContent = KIND_HINTS[kind] || '';
}

$('fault-target').addEventListener('change', syncFaultForm);
$('fault-kind').addEventListener('change', syncFaultForm);

$('fault-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const fault = { target: $('fault-target').value, kind: $('fault-kind').value };
  if (fault.kind === 'status') fault.status = Number($('fault-status').value);
  if (fault.kind === 'delay') fault.delay_ms = Number($('fault-delay').value);
  if (fault.kind === 'drop') fault.after_processing = $('fault-after').checked;
  const times = $('fault-times').value.trim();
  if (times) fault.times = Number(times);
  const invoice = $('fault-invoice').value.trim();
  if (invoice) fault.invoice_number = invoice;
  const button = ev.submitter || ev.target.querySelector('button[type=submit]');
  press(button, async () => {
    await api('POST', '/_sim/faults', fault);
    say(`Fault added: ${TARGET_LABELS[fault.target]}, ${faultDetails(fault)}.`, true);
  });
});

$('clear-faults').addEventListener('click', (ev) =>
  press(ev.currentTarget, async () => {
    await api('DELETE', '/_sim/faults');
    say('All faults cleared: DOKU behaves again.', true);
  }),
);

// ---------- start ----------

syncFaultForm();
const preset = new URLSearchParams(location.search).get('code');
if (preset) {
  $('counter-code').value = preset;
  press($('counter-form').querySelector('button[type=submit]'), () => lookUp(preset.replace(/\s+/g, '')));
}
refresh();
