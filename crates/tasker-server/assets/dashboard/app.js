// tasker dashboard: a single page over the JSON API of `tasker serve`.
//
// No framework and no build step: the server ships this file as it is.
// Every string from the server (task contexts, outputs, errors) is
// untrusted, so the DOM is built with createElement/textContent only,
// never innerHTML. Pages refresh by polling; leaving a page stops its
// poller.
'use strict';

(function () {
  // ---------------------------------------------------------------------
  // DOM helpers

  const SVG_NS = 'http://www.w3.org/2000/svg';

  // h('div', {class: 'x', onclick: f}, child, 'text', ...): an element.
  function h(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  // The same for SVG elements, which need their namespace.
  function s(tag, attrs, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  // Bidirectional controls: a right-to-left override in a worker id or an
  // output reversed the page's own words beside it ("pid 80541" read
  // "dip", "live" read "evil"). Every string is shown with them escaped.
  const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

  function visible(value) {
    return String(value).replace(BIDI, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
  }

  function build(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = visible(value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : visible(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      // Strings become text nodes: never parsed as markup.
      node.append(child instanceof Node ? child : visible(child));
    }
    return node;
  }

  function replace(node, ...children) {
    const kept = children.flat().filter((c) => c !== null && c !== undefined && c !== false);
    node.replaceChildren(...kept.map((c) => (c instanceof Node ? c : visible(c))));
  }

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------
  // Formatting

  function duration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
    if (ms < 1000) return Math.round(ms) + ' ms';
    // 1.5 s, 12.3 s, 5 s: no trailing zeros.
    if (ms < 60000) return parseFloat((ms / 1000).toFixed(ms < 10000 ? 2 : 1)) + ' s';
    const secs = Math.round(ms / 1000);
    if (secs < 3600) return Math.floor(secs / 60) + 'm' + (secs % 60 ? ' ' + (secs % 60) + 's' : '');
    return Math.floor(secs / 3600) + 'h ' + Math.floor((secs % 3600) / 60) + 'm';
  }

  // "12s ago"; the browser's clock against the server's timestamps.
  function ago(iso) {
    if (!iso) return '—';
    const secs = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (secs < 60) return secs + 's ago';
    if (secs < 3600) return Math.floor(secs / 60) + 'm ago';
    if (secs < 86400) return Math.floor(secs / 3600) + 'h ago';
    return Math.floor(secs / 86400) + 'd ago';
  }

  // Texts that move with the clock carry their timestamp (data-age: "12s
  // ago", data-since: a running duration) and are updated in place, so a
  // page is rebuilt only when its data changes: a click never lands on an
  // element that is being swapped out.
  function clock(attr, iso, tag) {
    return h(tag || 'span', { [attr]: iso, text: attr === 'data-age' ? ago(iso) : duration(Date.now() - Date.parse(iso)) });
  }

  function refreshClock(root) {
    for (const node of root.querySelectorAll('[data-age]')) node.textContent = ago(node.dataset.age);
    for (const node of root.querySelectorAll('[data-since]')) node.textContent = duration(Date.now() - Date.parse(node.dataset.since));
  }

  const fullTime = (iso) => (iso ? new Date(iso).toLocaleString() : '');
  const pretty = (value) => JSON.stringify(value, null, 2);
  const plural = (n, word) => n + ' ' + word + (n === 1 ? '' : 's');

  // How long a task ran, or has been running.
  function taskDuration(task) {
    const end = task.finished_at ? Date.parse(task.finished_at) : Date.now();
    return end - Date.parse(task.started_at);
  }

  function badge(state, extra) {
    return h('span', Object.assign({ class: 'badge s-' + state, text: state.replace('_', ' ') }, extra));
  }

  // ---------------------------------------------------------------------
  // API: bearer token from sessionStorage; problems become ApiError.

  const TOKEN_KEY = 'tasker.apiToken';

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method: opts.method || 'GET',
        headers,
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        cache: 'no-store',
      });
    } catch (err) {
      throw new ApiError(0, 'The server cannot be reached (' + err.message + ').');
    }
    if (response.ok) return response.json();
    // Errors are application/problem+json; show their `detail`.
    let problem = null;
    try {
      problem = await response.json();
    } catch (_) {
      // Not JSON (a proxy's page): fall back to the status line.
    }
    const detail = (problem && (problem.detail || problem.title)) || response.status + ' ' + response.statusText;
    throw new ApiError(response.status, detail);
  }

  // ---------------------------------------------------------------------
  // Status line: the "live" dot in the top bar and the error notice.

  function setLive(ok, text) {
    const live = $('live');
    live.className = 'live ' + (ok ? 'ok' : 'error');
    live.textContent = visible(text);
  }

  function notice(message) {
    const box = $('notice');
    box.hidden = !message;
    box.textContent = visible(message || '');
  }

  // Handles a failed request of a page. A 401 swaps the page for the token
  // form; anything else shows the problem's detail and polling goes on
  // (the server may come back) unless it was a 404. Returns whether to
  // keep polling.
  function handleError(err) {
    if (err instanceof ApiError && err.status === 401) {
      showTokenForm(err.detail);
      return false;
    }
    notice(err instanceof ApiError ? err.detail : 'Unexpected error: ' + err.message);
    setLive(false, 'error');
    if (!(err instanceof ApiError)) console.error(err);
    // What is not there (a deleted or mistyped task) will not appear.
    return !(err instanceof ApiError && err.status === 404);
  }

  // ---------------------------------------------------------------------
  // Poller: at most one loop at a time, for the page on screen. Each
  // start() bumps a generation; a loop (or a late fetch) of an older
  // generation finds itself stale and stops, so leaving a page stops its
  // polling and never paints over the next page.

  const Poller = {
    generation: 0,
    timer: null,

    // Runs tick(isCurrent) now and every `ms` after it finishes; a tick
    // returning false ends the loop.
    start(tick, ms) {
      this.stop();
      const generation = this.generation;
      const isCurrent = () => generation === this.generation;
      const loop = async () => {
        if (!isCurrent()) return;
        let again = true;
        // A hidden tab skips its fetches; the loop just waits.
        if (!document.hidden) {
          try {
            again = (await tick(isCurrent)) !== false;
            if (isCurrent()) {
              notice(null);
              setLive(true, again ? 'live' : 'up to date');
            }
          } catch (err) {
            again = isCurrent() && handleError(err);
          }
        }
        if (again && isCurrent()) this.timer = setTimeout(loop, ms);
      };
      loop();
    },

    stop() {
      this.generation += 1;
      clearTimeout(this.timer);
      this.timer = null;
    },
  };

  // ---------------------------------------------------------------------
  // Router: #/tasks[?status=&workflow=&cursor=], #/tasks/ID, #/workers.

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/tasks';
    const [path, query] = raw.split('?');
    return { parts: path.split('/').filter(Boolean), params: new URLSearchParams(query || '') };
  }

  function route() {
    Poller.stop();
    notice(null);
    const { parts, params } = parseHash();
    const section = parts[0] === 'workers' ? 'workers' : 'tasks';
    for (const link of document.querySelectorAll('[data-nav]')) {
      link.classList.toggle('active', link.dataset.nav === section);
    }
    $('forget-token').hidden = !sessionStorage.getItem(TOKEN_KEY);
    if (parts[0] === 'tasks' && parts[1]) TaskPage.show(decodeURIComponent(parts[1]));
    else if (section === 'workers') WorkersPage.show();
    else TasksPage.show(params);
  }

  function pageHead(title, subtitle, ...right) {
    return h('div', { class: 'page-head' },
      h('div', null, h('h1', null, title), subtitle ? h('div', { class: 'subtitle', text: subtitle }) : null),
      h('div', { class: 'actions' }, ...right));
  }

  function card(title, body, ...headRight) {
    return h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', { text: title }), h('div', { class: 'toolbar' }, ...headRight)),
      body);
  }

  // ---------------------------------------------------------------------
  // Token form: shown on a 401 from any /v1 call.

  function showTokenForm(detail) {
    Poller.stop();
    notice(null);
    setLive(false, 'needs a token');
    const hadToken = !!sessionStorage.getItem(TOKEN_KEY);
    // A stored token that earned a 401 is wrong: forget it.
    sessionStorage.removeItem(TOKEN_KEY);
    $('forget-token').hidden = true;
    const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', placeholder: 'API token', 'aria-label': 'API token', required: true });
    const form = h('form', { 'data-testid': 'token-form' },
      h('p', { class: 'muted', text: 'Paste one of the tokens of this server\'s api_tokens_file. It is kept in this tab only (sessionStorage).' }),
      hadToken ? h('div', { class: 'inline-error', text: 'That token was refused: ' + detail }) : null,
      input,
      h('button', { class: 'primary', type: 'submit', text: 'Continue' }));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      route();
    });
    replace($('app'), h('div', { class: 'auth' }, card('This server needs an API token', h('div', { class: 'card-body' }, form))));
    input.focus();
  }

  // ---------------------------------------------------------------------
  // Tasks page: stats, throughput chart, filtered and paged task list.

  const TASK_STATUSES = ['running', 'complete', 'failed', 'cancelled'];

  const TasksPage = {
    show(params) {
      const filter = {
        status: params.get('status') || '',
        workflow: params.get('workflow') || '',
        cursor: params.get('cursor') || '',
      };
      // Changing a filter or page is a new hash: back/forward and reload keep it.
      const go = (changes) => {
        const next = Object.assign({}, filter, changes);
        const query = new URLSearchParams();
        for (const key of ['status', 'workflow', 'cursor']) if (next[key]) query.set(key, next[key]);
        const text = query.toString();
        location.hash = '#/tasks' + (text ? '?' + text : '');
      };

      const statusSelect = h('select', { 'aria-label': 'Status', onchange: () => go({ status: statusSelect.value, cursor: '' }) },
        h('option', { value: '', text: 'All statuses' }),
        TASK_STATUSES.map((st) => h('option', { value: st, text: st, selected: st === filter.status })));
      const workflowSelect = h('select', { 'aria-label': 'Workflow', onchange: () => go({ workflow: workflowSelect.value, cursor: '' }) },
        h('option', { value: '', text: 'All workflows' }),
        filter.workflow ? h('option', { value: filter.workflow, text: filter.workflow, selected: true }) : null);
      const newest = h('button', { type: 'button', text: '« Newest', disabled: !filter.cursor, onclick: () => go({ cursor: '' }) });
      const next = h('button', { type: 'button', text: 'Next »', disabled: true });

      const stats = h('div', { class: 'stats' });
      const chart = h('div', { class: 'chart-holder' });
      const rows = h('tbody');
      replace($('app'),
        pageHead('Tasks', 'Newest first; refreshes every 2 s'),
        stats,
        card('Throughput', h('div', { class: 'card-body' }, chart),
          h('span', { class: 'legend' },
            h('span', null, h('i', { class: 'sw-completed' }), 'steps completed'),
            h('span', null, h('i', { class: 'sw-failed' }), 'steps failed'))),
        card('Tasks',
          h('div', { class: 'card-body flush scroll-x' },
            h('table', null,
              h('thead', null, h('tr', null,
                ['Task', 'Workflow', 'Status', 'Steps', 'Started', 'Duration'].map((t) => h('th', { text: t })))),
              rows)),
          h('label', null, 'Status', statusSelect),
          h('label', null, 'Workflow', workflowSelect),
          h('span', { class: 'pager' }, newest, next)));

      // The workflow names, once: for the filter's options.
      api('/v1/workflows').then((list) => {
        for (const wf of list.workflows || []) {
          if (wf.name !== filter.workflow) workflowSelect.append(h('option', { value: wf.name, text: wf.name }));
        }
      }).catch(() => { /* the list's own poll reports errors */ });

      let lastKey = null;
      const query = new URLSearchParams({ limit: '25' });
      for (const key of ['status', 'workflow', 'cursor']) if (filter[key]) query.set(key, filter[key]);

      Poller.start(async (isCurrent) => {
        // The totals alone: the list of workers may be long.
        const [page, throughput, workers] = await Promise.all([
          api('/v1/tasks?' + query), api('/v1/throughput'), api('/v1/workers?limit=0')]);
        if (!isCurrent()) return false;
        const key = JSON.stringify(page);
        if (key !== lastKey) replace(rows, taskRows(page.tasks || []));
        lastKey = key;
        refreshClock(rows);
        next.disabled = !page.next_cursor;
        next.onclick = () => go({ cursor: page.next_cursor });
        ThroughputChart.render(chart, throughput);
        replace(stats, statTiles(throughput, workers));
        return true;
      }, 2000);
    },
  };

  function taskRows(tasks) {
    if (!tasks.length) return h('tr', null, h('td', { class: 'empty', colspan: 6, text: 'No tasks match.' }));
    return tasks.map((task) => {
      const link = '#/tasks/' + encodeURIComponent(task.task_id);
      return h('tr', {
        class: 'clickable', 'data-testid': 'task-row', 'data-task-id': task.task_id, 'data-status': task.status,
        onclick: (event) => { if (!event.target.closest('a')) location.hash = link; },
      },
      h('td', null, h('a', { href: link, class: 'mono', text: '#' + task.task_id })),
      h('td', { text: task.workflow }),
      h('td', null, badge(task.status), task.cancel_requested && task.status === 'running' ? h('span', { class: 'muted', text: ' cancelling' }) : null),
      h('td', null, progress(task.steps_completed, task.steps_total, task.status)),
      h('td', { title: fullTime(task.started_at) }, clock('data-age', task.started_at)),
      h('td', { class: 'num' }, task.finished_at ? duration(taskDuration(task)) : clock('data-since', task.started_at)));
    });
  }

  function progress(done, total, status) {
    const pct = total ? Math.round((100 * done) / total) : 0;
    const kind = status === 'complete' ? '' : status;
    const fill = h('div', { class: 'fill ' + kind });
    // Through CSSOM: the server's Content-Security-Policy refuses style="" attributes.
    fill.style.width = pct + '%';
    return h('div', { class: 'progress' },
      h('div', { class: 'track' }, fill),
      h('span', { class: 'count', text: done + '/' + total }));
  }

  function statTiles(throughput, workers) {
    const points = throughput.points || [];
    const sum = (key) => points.reduce((n, p) => n + (p[key] || 0), 0);
    // The server keeps up to the last 10 minutes of intervals, from its
    // start: a restart begins again at zero.
    const span = ' (last 10 min)';
    const tile = (label, value, cls) => h('div', { class: 'stat ' + (cls || '') },
      h('div', { class: 'label', text: label }), h('div', { class: 'value', text: value }));
    return [
      tile('Steps completed' + span, sum('completed'), 'good'),
      // Attempts, not steps: a retried attempt that failed counts, though
      // its step may complete on the next one.
      tile('Attempts failed' + span, sum('failed'), sum('failed') ? 'bad' : ''),
      tile('Workers', workers.total || 0),
      tile('In flight / capacity', (workers.in_flight || 0) + ' / ' + (workers.capacity || 0)),
    ];
  }

  // ---------------------------------------------------------------------
  // Throughput chart: stacked bars per interval (completed, failed on top),
  // drawn at the holder's width so text is not stretched.

  const ThroughputChart = {
    render(holder, data) {
      const intervalMs = (data.interval_seconds || 2) * 1000;
      const points = data.points || [];
      const width = Math.max(holder.clientWidth || 800, 320);
      const height = 180;
      const pad = { left: 40, right: 12, top: 10, bottom: 24 };
      // The server may leave empty intervals out: lay a full time axis over
      // the span it sent (at least 3 minutes, so a fresh server's first
      // bars are not lone slivers) and drop each point in its slot.
      const end = Math.max(Date.now(), ...points.map((p) => Date.parse(p.at) + intervalMs));
      const first = points.length ? Date.parse(points[0].at) : end;
      const span = Math.max(3 * 60 * 1000, end - first);
      const slots = Math.ceil(span / intervalMs);
      const start = end - slots * intervalMs;
      const completed = new Array(slots).fill(0);
      const failed = new Array(slots).fill(0);
      for (const p of points) {
        const i = Math.floor((Date.parse(p.at) - start) / intervalMs);
        if (i >= 0 && i < slots) {
          completed[i] += p.completed || 0;
          failed[i] += p.failed || 0;
        }
      }
      const peak = Math.max(1, ...completed.map((c, i) => c + failed[i]));
      // Gridlines at a round count; the top one at or above the peak.
      const yStep = niceCount(peak / 4);
      const yMax = yStep * Math.max(1, Math.ceil(peak / yStep));
      const plotW = width - pad.left - pad.right;
      const plotH = height - pad.top - pad.bottom;
      const slotW = plotW / slots;
      const y = (v) => pad.top + plotH - (v / yMax) * plotH;

      const svg = s('svg', { class: 'chart', 'data-testid': 'throughput-chart', width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-label': 'Steps completed and failed per ' + intervalMs / 1000 + ' s' });
      for (let v = 0; v <= yMax; v += yStep) {
        svg.append(s('line', { class: 'grid', x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }),
          s('text', { class: 'axis', x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end', text: formatCount(v) }));
      }
      for (let m = 0; m * 60000 <= span; m += span > 20 * 60000 ? 5 : 1) {
        const x = pad.left + plotW - (m * 60000 / span) * plotW;
        svg.append(s('text', { class: 'axis', x, y: height - 6, 'text-anchor': m === 0 ? 'end' : 'middle', text: m === 0 ? 'now' : '-' + m + 'm' }));
      }
      const barW = Math.max(1, slotW - (slotW > 4 ? 1 : 0));
      for (let i = 0; i < slots; i++) {
        if (!completed[i] && !failed[i]) continue;
        const x = pad.left + i * slotW;
        const label = new Date(start + i * intervalMs).toLocaleTimeString() + ': ' + completed[i] + ' completed, ' + failed[i] + ' failed';
        const group = s('g', null, s('title', { text: label }));
        if (completed[i]) group.append(s('rect', { class: 'c-completed', x, width: barW, y: y(completed[i]), height: y(0) - y(completed[i]) }));
        if (failed[i]) group.append(s('rect', { class: 'c-failed', x, width: barW, y: y(completed[i] + failed[i]), height: y(completed[i]) - y(completed[i] + failed[i]) }));
        svg.append(group);
      }
      replace(holder, svg);
    },
  };

  // A whole 1, 2 or 5 × 10^n at or above v.
  function niceCount(v) {
    if (v <= 1) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * exp >= v) return m * exp;
    return Math.ceil(v);
  }

  const formatCount = (v) => (v >= 1000 ? parseFloat((v / 1000).toFixed(1)) + 'k' : String(v));

  // ---------------------------------------------------------------------
  // Workers page

  const WorkersPage = {
    show() {
      const rows = h('tbody');
      const more = h('div');
      replace($('app'),
        pageHead('Workers', 'Connected workers; refreshes every 2 s'),
        card('Workers', h('div', { class: 'card-body flush scroll-x' },
          h('table', null,
            h('thead', null, h('tr', null,
              ['Worker', 'Language', 'Handlers', 'Capacity', 'In flight', 'State', 'Heartbeat'].map((t) =>
                h('th', { class: t === 'Capacity' || t === 'In flight' ? 'num' : null, text: t })))),
            rows)),
          more));
      Poller.start(async (isCurrent) => {
        const list = await api('/v1/workers');
        if (!isCurrent()) return false;
        const shown = (list.workers || []).length;
        replace(rows, workerRows(list.workers || []));
        replace(more, list.total > shown
          ? h('p', { class: 'muted', 'data-testid': 'workers-more', text: 'The first ' + shown + ' of ' + list.total + ' workers, by id.' })
          : null);
        return true;
      }, 2000);
    },
  };

  function workerRows(workers) {
    if (!workers.length) return h('tr', null, h('td', { class: 'empty', colspan: 7, text: 'No worker is connected. Start one with `tasker worker`.' }));
    return workers.map((w) => {
      const beat = Date.now() - Date.parse(w.last_heartbeat_at);
      return h('tr', { 'data-testid': 'worker-row', 'data-worker-id': w.worker_id },
        h('td', null, h('span', { class: 'mono', text: w.worker_id }), w.pid ? h('span', { class: 'muted', text: '  pid ' + w.pid }) : null),
        h('td', { text: w.language || '—' }),
        h('td', null, (w.handlers || []).map((name) => h('span', { class: 'chip', text: name })),
          w.handlers_total > (w.handlers || []).length
            ? h('span', { class: 'muted', text: ' and ' + (w.handlers_total - w.handlers.length) + ' more' })
            : null),
        h('td', { class: 'num', text: w.capacity }),
        h('td', { class: 'num', text: w.in_flight }),
        h('td', null, w.draining ? badge('retry_wait', { text: 'draining' }) : badge('completed', { text: 'ready' })),
        h('td', { title: fullTime(w.last_heartbeat_at), class: beat > 10000 ? 'inline-error' : null, text: beat < 10000 ? (Math.max(0, beat) / 1000).toFixed(1) + 's ago' : ago(w.last_heartbeat_at) }));
    });
  }

  // ---------------------------------------------------------------------
  // Task page: header, DAG, timeline, steps, context.

  const TaskPage = {
    // Steps whose details the user opened, by task: kept across re-renders.
    open: new Map(),

    show(id) {
      const head = h('div');
      const dag = h('div', { class: 'scroll-x' });
      const timeline = h('div', { class: 'scroll-x' });
      const stepList = h('div');
      const context = h('div');
      replace($('app'),
        h('a', { class: 'crumb', href: '#/tasks', text: '← All tasks' }),
        head,
        card('Graph', h('div', { class: 'card-body' }, dag)),
        card('Timeline', h('div', { class: 'card-body' }, timeline,
          h('div', { class: 'legend' },
            [['completed', 'completed'], ['failed', 'failed'], ['retry_wait', 'failed, retried'], ['running', 'running'], ['waiting', 'taken back, sent again'], ['cancelled', 'cancelled']]
              .map(([cls, label]) => h('span', null, h('i', { class: 'sw-' + cls }), label)),
            h('span', null, h('i', { class: 'hatch' }), 'backoff')))),
        h('div', { class: 'two-col' },
          card('Steps', h('div', { class: 'card-body flush' }, stepList)),
          card('Context', h('div', { class: 'card-body' }, context))));
      replace(head, pageHead('Task #' + id, 'loading…'));

      if (!this.open.has(id)) this.open.set(id, new Set());
      const openSteps = this.open.get(id);
      let lastKey = null;
      let lastEntries = -1;
      let lastTask = null;
      // A refused cancel's detail stays up across repaints until the next click.
      let cancelError = '';
      const cancel = async (button) => {
        // One click cancelled a task, however much it had done.
        if (!window.confirm('Cancel task #' + id + '? Steps at workers finish; the rest do not run.')) return;
        button.disabled = true;
        cancelError = '';
        try {
          await api('/v1/tasks/' + encodeURIComponent(id) + '/cancel', { method: 'POST', body: {} });
          // Repaint now rather than at the next tick.
          Poller.start(tick, 1000);
        } catch (err) {
          if (err instanceof ApiError && err.status === 401) return showTokenForm(err.detail);
          cancelError = err.detail || err.message;
          replace(head, taskHeader(lastTask, cancel, cancelError));
          refreshClock(head);
        }
      };
      let lastHeadKey = null;
      const paint = (task, entries) => {
        lastTask = task;
        // Rebuilt only when what they show changed; running durations
        // tick in place (the server's duration_ms of a running task or
        // step moves every second, so it is left out of the keys).
        const steps = (task.steps || []).map((st) => Object.assign({}, st, { duration_ms: st.state === 'running' ? 0 : st.duration_ms }));
        const headKey = JSON.stringify([task.status, task.cancel_requested, task.finished_at, steps.map((st) => st.state)]);
        if (headKey !== lastHeadKey) replace(head, taskHeader(task, cancel, cancelError));
        lastHeadKey = headKey;
        refreshClock(head);
        // The timeline's right edge is "now" while the task runs.
        if (task.status === 'running' || entries.length !== lastEntries) Timeline.render(timeline, task, entries);
        lastEntries = entries.length;
        const key = JSON.stringify([task.status, task.context, steps, entries.length]);
        if (key === lastKey) return;
        lastKey = key;
        Dag.render(dag, task.steps || [], (name) => revealStep(stepList, openSteps, name));
        replace(stepList, (task.steps || []).map((step) => stepDetails(step, openSteps)));
        replace(context, h('pre', { text: pretty(task.context === undefined ? null : task.context) }));
      };

      const tick = async (isCurrent) => {
        const [task, journal] = await Promise.all([
          api('/v1/tasks/' + encodeURIComponent(id)),
          api('/v1/tasks/' + encodeURIComponent(id) + '/journal')]);
        if (!isCurrent()) return false;
        paint(task, journal.entries || []);
        // An ended task no longer changes: stop asking.
        return task.status === 'running';
      };
      Poller.start(tick, 1000);
    },
  };

  function taskHeader(task, onCancel, cancelError) {
    const running = task.status === 'running';
    const error = h('span', { class: 'inline-error', text: cancelError });
    let cancel = null;
    // Cancel is offered while the task runs; a requested cancel waits for
    // the steps at workers, so the button stays, disabled, until the end.
    if (running) {
      cancel = h('button', {
        type: 'button', class: 'danger', 'data-testid': 'cancel-button',
        disabled: task.cancel_requested,
        text: task.cancel_requested ? 'Cancelling…' : 'Cancel task',
      });
      cancel.addEventListener('click', () => onCancel(cancel));
    }
    const steps = task.steps || [];
    const done = steps.filter((st) => st.state === 'completed').length;
    const title = h('span', null, 'Task ', h('span', { class: 'mono task-id', text: '#' + task.task_id }));
    const head = pageHead(title, null, error, cancel);
    head.querySelector('h1').append(badge(task.status, { 'data-testid': 'task-status', class: 'badge large s-' + task.status, text: task.status }));
    if (running && task.cancel_requested) {
      head.querySelector('h1').append(h('span', { class: 'note', text: 'cancel requested; running steps finish first' }));
    }
    head.firstChild.append(h('div', { class: 'meta' },
      h('span', null, 'Workflow ', h('b', { text: task.workflow })),
      h('span', { title: fullTime(task.started_at) }, 'Started ', clock('data-age', task.started_at, 'b')),
      task.finished_at ? h('span', { title: fullTime(task.finished_at) }, 'Finished ', clock('data-age', task.finished_at, 'b')) : null,
      h('span', null, running ? 'Running for ' : 'Took ', running ? clock('data-since', task.started_at, 'b') : h('b', { text: duration(task.duration_ms) })),
      h('span', null, 'Steps ', h('b', { text: done + '/' + steps.length + ' completed' }))));
    return head;
  }

  // Opens a step's details and scrolls to it (from a click on the DAG).
  function revealStep(container, openSteps, name) {
    const details = [...container.querySelectorAll('details.step')].find((d) => d.dataset.step === name);
    if (!details) return;
    details.open = true;
    openSteps.add(name);
    details.scrollIntoView({ behavior: 'smooth', block: 'center' });
    details.classList.add('flash');
    setTimeout(() => details.classList.remove('flash'), 1200);
  }

  function stepDetails(step, openSteps) {
    // Failed steps open by themselves the first time: the error is the news.
    if (step.error && !openSteps.has('!' + step.name)) {
      openSteps.add('!' + step.name);
      openSteps.add(step.name);
    }
    const details = h('details', { class: 'step', 'data-step': step.name, open: openSteps.has(step.name) },
      h('summary', null,
        h('span', { class: 'name' }, step.name, h('span', { class: 'handler', text: step.handler })),
        h('span', null, badge(step.state)),
        h('span', { class: 'muted', text: plural(step.attempts || 0, 'attempt') }),
        h('span', { class: 'muted mono', text: step.worker_id || '' }),
        h('span', { class: 'num muted', text: step.duration_ms ? duration(step.duration_ms) : '' })),
      h('div', { class: 'step-body' }, stepBody(step)));
    details.addEventListener('toggle', () => {
      if (details.open) openSteps.add(step.name);
      else openSteps.delete(step.name);
    });
    return details;
  }

  function stepBody(step) {
    const parts = [];
    if (step.blocked_by) parts.push(h('div', { class: 'muted' }, 'Blocked: ', h('b', { text: step.blocked_by }), ' did not complete.'));
    if (step.next_run_at) parts.push(h('div', { class: 'muted', title: fullTime(step.next_run_at) }, 'Next attempt at ' + new Date(step.next_run_at).toLocaleTimeString()));
    if (step.depends_on && step.depends_on.length) parts.push(h('div', { class: 'muted' }, 'After ', step.depends_on.map((d) => h('span', { class: 'chip', text: d }))));
    if (step.error) {
      const e = step.error;
      parts.push(h('div', null, h('h3', { text: 'Error' }),
        h('div', { class: 'error-box' },
          h('span', { class: 'etype', text: e.error_type || 'error' }),
          h('span', { text: e.message || '' }),
          h('div', { class: 'note', text: e.retryable ? 'retryable' : 'not retryable' }))));
      if (e.backtrace && e.backtrace.length) {
        parts.push(h('div', null, h('h3', { text: 'Backtrace' }), h('pre', { text: e.backtrace.join('\n') })));
      }
    }
    if (step.output !== undefined && step.output !== null) {
      parts.push(h('div', null, h('h3', { text: 'Output' }), h('pre', { text: pretty(step.output) })));
    }
    if (!parts.length) parts.push(h('div', { class: 'muted', text: step.state === 'running' ? 'Running…' : 'No output yet.' }));
    return parts;
  }

  // ---------------------------------------------------------------------
  // DAG: layered left to right. A step's column is its longest path from a
  // root, so every arrow points right; within a column steps sit near the
  // average row of their parents, which keeps most arrows short.

  const Dag = {
    nodeW: 168,
    nodeH: 48,
    gapX: 64,
    gapY: 18,
    pad: 16,

    layout(steps) {
      const byName = new Map(steps.map((st, i) => [st.name, i]));
      const depth = new Array(steps.length).fill(-1);
      const depthOf = (i, visiting) => {
        if (depth[i] >= 0) return depth[i];
        if (visiting.has(i)) return 0; // a cycle cannot be stored, but never loop
        visiting.add(i);
        let d = 0;
        for (const dep of steps[i].depends_on || []) {
          if (byName.has(dep)) d = Math.max(d, depthOf(byName.get(dep), visiting) + 1);
        }
        visiting.delete(i);
        depth[i] = d;
        return d;
      };
      steps.forEach((_, i) => depthOf(i, new Set()));
      const columns = [];
      steps.forEach((_, i) => (columns[depth[i]] = columns[depth[i]] || []).push(i));
      const row = new Array(steps.length).fill(0);
      for (const column of columns) {
        const weight = (i) => {
          const parents = (steps[i].depends_on || []).filter((d) => byName.has(d)).map((d) => row[byName.get(d)]);
          return parents.length ? parents.reduce((a, b) => a + b, 0) / parents.length : i;
        };
        column.sort((a, b) => weight(a) - weight(b) || a - b);
        column.forEach((i, r) => (row[i] = r));
      }
      const tallest = Math.max(1, ...columns.map((c) => c.length));
      const position = steps.map((_, i) => {
        const offset = ((tallest - columns[depth[i]].length) * (this.nodeH + this.gapY)) / 2;
        return {
          x: this.pad + depth[i] * (this.nodeW + this.gapX),
          y: this.pad + offset + row[i] * (this.nodeH + this.gapY),
        };
      });
      return {
        byName, position,
        width: this.pad * 2 + columns.length * this.nodeW + (columns.length - 1) * this.gapX,
        height: this.pad * 2 + tallest * this.nodeH + (tallest - 1) * this.gapY,
      };
    },

    render(holder, steps, onSelect) {
      if (!steps.length) return replace(holder, h('div', { class: 'empty', text: 'This task has no steps.' }));
      const { byName, position, width, height } = this.layout(steps);
      const svg = s('svg', { class: 'dag', width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-label': 'Step graph' },
        s('defs', null, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
          s('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#7c8594' }))));
      steps.forEach((step, i) => {
        for (const dep of step.depends_on || []) {
          if (!byName.has(dep)) continue;
          const parent = steps[byName.get(dep)];
          const from = position[byName.get(dep)];
          const to = position[i];
          const x1 = from.x + this.nodeW;
          const y1 = from.y + this.nodeH / 2;
          const x2 = to.x - 2;
          const y2 = to.y + this.nodeH / 2;
          const mid = (x1 + x2) / 2;
          svg.append(s('path', {
            class: 'edge' + (parent.state === 'completed' ? ' done' : ''),
            d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
            'marker-end': 'url(#arrow)',
          }));
        }
      });
      steps.forEach((step, i) => {
        const { x, y } = position[i];
        const tries = step.attempts ? ' · ' + plural(step.attempts, 'try').replace('trys', 'tries') : '';
        const node = s('g', {
          class: 'node n-' + step.state, 'data-testid': 'step-node', 'data-step': step.name, 'data-state': step.state,
          transform: `translate(${x} ${y})`, tabindex: 0,
          onclick: () => onSelect(step.name),
          onkeydown: (event) => { if (event.key === 'Enter') onSelect(step.name); },
        },
        s('title', { text: step.name + ' (' + step.handler + '): ' + step.state + tries }),
        s('rect', { width: this.nodeW, height: this.nodeH, rx: 9, ry: 9 }),
        s('text', { class: 'name', x: 12, y: 20, text: clip(step.name, 19) }),
        s('text', { class: 'sub', x: 12, y: 37, text: step.state.replace('_', ' ') + tries }));
        svg.append(node);
      });
      replace(holder, svg);
    },
  };

  const clip = (text, n) => (text.length > n ? text.slice(0, n - 1) + '…' : text);

  // ---------------------------------------------------------------------
  // Timeline: one lane per step, a bar per attempt from its `-> running`
  // journal row to the step's next row, coloured by how that row ended it;
  // a retry_wait row starts a hatched backoff until the next dispatch.

  // The attempts and backoffs of each step, from the journal.
  function attemptsOf(entries, task) {
    const ended = task.finished_at ? Date.parse(task.finished_at) : null;
    const open = ended || Date.now();
    const byStep = new Map();
    for (const entry of entries) {
      if (entry.step_id === null || entry.step_id === undefined) continue;
      if (!byStep.has(entry.step_id)) byStep.set(entry.step_id, []);
      byStep.get(entry.step_id).push(entry);
    }
    const lanes = new Map();
    for (const [stepId, rows] of byStep) {
      rows.sort((a, b) => a.seq - b.seq);
      const attempts = [];
      const backoffs = [];
      rows.forEach((row, i) => {
        const next = rows[i + 1];
        const start = Date.parse(row.at);
        if (row.to_state === 'running') {
          const outcome = next ? (next.to_state === 'running' ? 'other' : next.to_state) : ended ? 'other' : 'running';
          // The worker is named on the row that ended the attempt (a dispatch
          // row may not know it yet).
          const worker = (next && next.worker_id) || row.worker_id;
          // The step shows only its latest error; an earlier attempt's is on
          // the row that ended it.
          const error = next && next.error;
          attempts.push({ start, end: next ? Date.parse(next.at) : open, outcome, attempt: row.attempt, worker, error });
        } else if (row.to_state === 'retry_wait') {
          backoffs.push({ start, end: next ? Date.parse(next.at) : open });
        }
      });
      lanes.set(stepId, { attempts, backoffs });
    }
    return lanes;
  }

  const Timeline = {
    labelW: 150,
    laneH: 30,
    barH: 14,
    axisH: 24,

    render(holder, task, entries) {
      const steps = task.steps || [];
      const lanes = attemptsOf(entries, task);
      const times = entries.map((e) => Date.parse(e.at));
      const t0 = Math.min(Date.parse(task.started_at), ...times);
      const t1 = Math.max(task.finished_at ? Date.parse(task.finished_at) : Date.now(), ...times, t0 + 1);
      const width = Math.max(holder.clientWidth || 900, 600);
      const plotW = width - this.labelW - 16;
      const height = this.axisH + steps.length * this.laneH + 4;
      const x = (t) => this.labelW + ((t - t0) / (t1 - t0)) * plotW;

      const svg = s('svg', { class: 'timeline', 'data-testid': 'timeline', width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-label': 'Attempts over time' },
        s('defs', null, s('pattern', { id: 'hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
          s('rect', { width: 6, height: 6, fill: '#fff4dc' }),
          s('line', { x1: 0, y1: 0, x2: 0, y2: 6, stroke: '#f59e0b', 'stroke-width': 2 }))));

      // Time axis: about six ticks at a round step.
      const tick = niceStep((t1 - t0) / 6);
      for (let t = 0; t <= t1 - t0; t += tick) {
        svg.append(s('line', { class: 'grid', x1: x(t0 + t), x2: x(t0 + t), y1: this.axisH - 4, y2: height }),
          s('text', { class: 'tick', x: x(t0 + t), y: 12, 'text-anchor': t === 0 ? 'start' : 'middle', text: t === 0 ? 'start' : '+' + duration(t) }));
      }

      steps.forEach((step, i) => {
        const top = this.axisH + i * this.laneH;
        const mid = top + (this.laneH - this.barH) / 2;
        svg.append(
          s('rect', { class: 'lane-bg', x: 0, y: top + 1, width, height: this.laneH - 2, opacity: i % 2 ? 0 : 1 }),
          s('text', { class: 'lane-label', x: 8, y: top + this.laneH / 2 + 4, text: clip(step.name, 20) }));
        const lane = lanes.get(step.step_id) || { attempts: [], backoffs: [] };
        for (const b of lane.backoffs) {
          svg.append(s('rect', { class: 'backoff', 'data-testid': 'backoff', x: x(b.start), y: mid, width: Math.max(2, x(b.end) - x(b.start)), height: this.barH, rx: 2 },
            s('title', { text: step.name + ': backoff ' + duration(b.end - b.start) })));
        }
        for (const a of lane.attempts) {
          const cls = ['completed', 'failed', 'retry_wait', 'running', 'cancelled', 'waiting'].includes(a.outcome) ? a.outcome : 'other';
          const what = a.outcome === 'retry_wait' ? 'failed, retried'
            : a.outcome === 'waiting' ? 'taken back unstarted, sent again'
            : a.outcome === 'other' ? 'ended' : a.outcome;
          svg.append(s('rect', {
            class: 'bar-' + cls, 'data-testid': 'attempt-bar', 'data-step': step.name, 'data-attempt': a.attempt, 'data-outcome': a.outcome,
            x: x(a.start), y: mid, width: Math.max(3, x(a.end) - x(a.start)), height: this.barH, rx: 3,
          }, s('title', {
            text: `${step.name} attempt ${a.attempt}: ${duration(a.end - a.start)}, ${what}` + (a.worker ? ' on ' + a.worker : '')
              + (a.error ? ` (${a.error.error_type}: ${clip(a.error.message, 300)})` : ''),
          })));
        }
        if (!lane.attempts.length) {
          svg.append(s('text', { class: 'idle', x: this.labelW + 4, y: top + this.laneH / 2 + 4, text: step.state === 'waiting' ? 'not started' : 'never ran (' + step.state.replace('_', ' ') + ')' }));
        }
      });
      replace(holder, svg);
    },
  };

  // A round step (1, 2, 5 × 10^n ms, or whole seconds/minutes) at or above ms.
  function niceStep(ms) {
    const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000, 1800000, 3600000];
    return steps.find((step) => step >= ms) || Math.ceil(ms / 3600000) * 3600000;
  }

  // ---------------------------------------------------------------------
  // Start

  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    route();
  });
  window.addEventListener('hashchange', route);
  // Charts are drawn at the page's width: redraw after a resize settles.
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(route, 300);
  });
  route();
})();
