// keen-sink's browser explorer: Streams (the latest events of each collection, refreshed live)
// and Explorer (a query form with table, chart and JSON views). It speaks Keen's query API with
// the read key the user typed in, kept in this tab's sessionStorage and sent only in the
// Authorization header; a query's parameters live in the page URL, so it can be shared, but the
// key never does. Every value that comes from events is put into the page as text
// (textContent, never innerHTML): lamps may send any string.
'use strict';

const KEY_STORAGE = 'keen-sink.read-key';
const STREAM_EVENTS = 10;
const STREAM_REFRESH_MS = 5000;
const QUERY_FIELDS = [
  'analysis_type',
  'event_collection',
  'target_property',
  'percentile',
  'timeframe',
  'interval',
  'group_by',
  'timezone',
  'latest',
];

const $ = (id) => document.getElementById(id);
const state = { projectId: '', collections: [], chart: null, streamTimer: null, lastBody: null, lastParams: null };

// ---- Keen API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? `${body.error_code || status}: ${body.message}` : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, body) {
  const key = sessionStorage.getItem(KEY_STORAGE) || '';
  const response = await fetch(`/3.0/projects/${encodeURIComponent(state.projectId)}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: body === undefined ? { Authorization: key } : { Authorization: key, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    // not JSON: reported by status below
  }
  if (response.status === 401) logout('The read key was refused: log in again.');
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

const query = (analysis, params) => api(`/queries/${encodeURIComponent(analysis)}`, params);

// ---- DOM helpers ------------------------------------------------------------------------

/** An element with text content only; `text` may be anything (it is stringified). */
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = typeof text === 'string' ? text : JSON.stringify(text);
  if (className) node.className = className;
  return node;
}

function display(value) {
  if (value === null || value === undefined) return '';
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function table(columns, rows) {
  const t = el('table');
  const head = t.createTHead().insertRow();
  for (const column of columns) head.appendChild(el('th', column));
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const cell of row) tr.appendChild(el('td', display(cell), typeof cell === 'number' ? 'num' : undefined));
  }
  return t;
}

/** Dotted property names and values of an event, own properties only. */
function flatten(value, prefix = '', out = []) {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const key of Object.keys(value)) flatten(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else if (prefix) {
    out.push([prefix, value]);
  }
  return out;
}

// ---- login and navigation ---------------------------------------------------------------

function show(view) {
  for (const id of ['login', 'streams', 'explorer']) $(id).hidden = id !== view;
  $('nav').hidden = view === 'login';
  for (const link of document.querySelectorAll('#nav a')) link.classList.toggle('active', link.dataset.view === view);
  clearInterval(state.streamTimer);
  state.streamTimer = null;
  if (view === 'streams') startStreams();
}

function logout(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  $('login-error').textContent = message || '';
  show('login');
}

async function loadCollections() {
  state.collections = await api('/events');
  const list = $('collections');
  list.replaceChildren(...state.collections.map((c) => Object.assign(el('option'), { value: c.name })));
  updateProperties();
}

function updateProperties() {
  const collection = state.collections.find((c) => c.name === $('event_collection').value);
  const names = collection ? Object.keys(collection.properties) : [];
  $('properties').replaceChildren(...names.map((name) => Object.assign(el('option'), { value: name })));
}

async function enter() {
  try {
    await loadCollections();
  } catch (err) {
    if (err.status !== 401) $('login-error').textContent = String(err.message);
    return;
  }
  route();
}

function route() {
  const params = new URLSearchParams(location.search);
  const view = params.get('view') === 'explorer' || params.has('analysis_type') ? 'explorer' : 'streams';
  show(view);
  if (view === 'explorer') {
    fillForm(params);
    if (params.has('event_collection')) runQuery();
  }
}

// ---- Streams ----------------------------------------------------------------------------

function startStreams() {
  refreshStreams();
  state.streamTimer = setInterval(() => {
    if ($('live').checked) refreshStreams();
  }, STREAM_REFRESH_MS);
}

async function refreshStreams() {
  try {
    await loadCollections();
    const latest = await Promise.all(
      state.collections.map((c) => query('extraction', { event_collection: c.name, latest: STREAM_EVENTS })),
    );
    const blocks = state.collections.map((collection, index) => {
      const block = el('div', undefined, 'stream');
      block.dataset.collection = collection.name;
      block.appendChild(el('h3', collection.name));
      const events = latest[index].result.slice().reverse();
      if (events.length === 0) block.appendChild(el('p', 'no events', 'muted'));
      else {
        const rows = events.map((event) => {
          const copy = { ...event };
          const timestamp = copy.keen && copy.keen.timestamp;
          const pre = el('pre', JSON.stringify(copy, null, 1));
          return [timestamp, pre];
        });
        const t = table(['keen.timestamp', 'event'], []);
        const body = t.tBodies[0];
        for (const [timestamp, pre] of rows) {
          const tr = body.insertRow();
          tr.appendChild(el('td', display(timestamp)));
          const td = el('td');
          td.appendChild(pre);
          tr.appendChild(td);
        }
        block.appendChild(t);
      }
      return block;
    });
    $('streams-list').replaceChildren(
      ...(blocks.length ? blocks : [el('p', 'No events yet: they appear here as soon as they are written.', 'muted')]),
    );
    $('streams-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    $('streams-error').textContent = '';
  } catch (err) {
    $('streams-error').textContent = String(err.message);
  }
}

// ---- Explorer form ----------------------------------------------------------------------

function addFilter(filter = {}) {
  const row = $('filter-row').content.firstElementChild.cloneNode(true);
  row.querySelector('.filter-property').value = filter.property_name || '';
  row.querySelector('.filter-operator').value = filter.operator || 'eq';
  if (filter.property_value !== undefined) row.querySelector('.filter-value').value = JSON.stringify(filter.property_value);
  row.querySelector('.filter-remove').addEventListener('click', () => row.remove());
  $('filters').appendChild(row);
}

/** A filter value as typed: JSON when it parses (true, 3, "x", [1,2]), else the text itself. */
function filterValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function readForm() {
  const params = {};
  for (const name of QUERY_FIELDS) {
    const value = $(name).value.trim();
    if (value !== '') params[name] = value;
  }
  const filters = [...document.querySelectorAll('#filters .filter')]
    .map((row) => ({
      property_name: row.querySelector('.filter-property').value.trim(),
      operator: row.querySelector('.filter-operator').value,
      property_value: filterValue(row.querySelector('.filter-value').value.trim()),
    }))
    .filter((filter) => filter.property_name !== '');
  if (filters.length) params.filters = filters;
  return params;
}

function fillForm(params) {
  for (const name of QUERY_FIELDS) if (params.has(name)) $(name).value = params.get(name);
  if (!params.has('timezone') && !$('timezone').value) $('timezone').value = Intl.DateTimeFormat().resolvedOptions().timeZone || '';
  $('filters').replaceChildren();
  try {
    for (const filter of JSON.parse(params.get('filters') || '[]')) addFilter(filter);
  } catch {
    $('query-error').textContent = 'The filters in this URL are not valid JSON; they were left out.';
  }
  updateFields();
}

function updateFields() {
  const analysis = $('analysis_type').value;
  $('percentile-field').hidden = analysis !== 'percentile';
  $('latest-field').hidden = analysis !== 'extraction';
  updateProperties();
}

/** The API's parameters: the timeframe as JSON when it is an absolute {"start","end"}; group_by as a list. */
function apiParams(form) {
  const params = { ...form };
  delete params.analysis_type;
  if (params.timeframe && params.timeframe.startsWith('{')) params.timeframe = filterValue(params.timeframe);
  if (params.group_by) {
    const names = params.group_by
      .split(',')
      .map((name) => name.trim())
      .filter(Boolean);
    params.group_by = names.length === 1 ? names[0] : names;
  }
  if (params.percentile) params.percentile = Number(params.percentile);
  if (params.latest) params.latest = Number(params.latest);
  return params;
}

async function runQuery() {
  const form = readForm();
  // The shareable URL: every parameter but the key.
  const url = new URLSearchParams({ view: 'explorer' });
  for (const [name, value] of Object.entries(form)) url.set(name, typeof value === 'string' ? value : JSON.stringify(value));
  history.replaceState(null, '', `?${url}`);
  $('query-error').textContent = '';
  $('query-status').textContent = 'running…';
  try {
    const started = performance.now();
    const params = apiParams(form);
    const body = await query(form.analysis_type, params);
    $('query-status').textContent = `answered in ${Math.round(performance.now() - started)} ms`;
    state.lastBody = body;
    state.lastParams = { analysis: form.analysis_type, ...params };
    render();
  } catch (err) {
    $('query-status').textContent = '';
    $('query-error').textContent = String(err.message);
  }
}

// ---- results ----------------------------------------------------------------------------

const groupNames = (params) => (params.group_by === undefined ? [] : Array.isArray(params.group_by) ? params.group_by : [params.group_by]);

/** Rows of a result in Keen's shapes: scalar, list (select_unique), groups, intervals, events. */
function resultTable(params, result) {
  const groups = groupNames(params);
  const valueName = params.target_property ? `${params.analysis}(${params.target_property})` : params.analysis;
  if (params.analysis === 'extraction') {
    const events = result.map((event) => new Map(flatten(event)));
    const columns = [...new Set(events.flatMap((event) => [...event.keys()]))].slice(0, 40);
    return table(
      columns,
      events.map((event) => columns.map((column) => event.get(column))),
    );
  }
  const groupRows = (list, prefix) => list.map((entry) => [...prefix, ...groups.map((name) => entry[name]), entry.result]);
  if (params.interval) {
    const rows = result.flatMap((interval) => {
      const prefix = [interval.timeframe.start, interval.timeframe.end];
      return groups.length ? groupRows(interval.value, prefix) : [[...prefix, interval.value]];
    });
    return table(['start', 'end', ...groups, valueName], rows);
  }
  if (groups.length) return table([...groups, valueName], groupRows(result, []));
  if (Array.isArray(result))
    return table(
      [params.target_property || 'value'],
      result.map((value) => [value]),
    );
  return el('p', display(result), 'big');
}

/** A chart of an interval (a line per group) or of groups (bars); other results have none. */
function chartData(params, result) {
  const groups = groupNames(params);
  const numeric = (value) => (typeof value === 'number' ? value : Array.isArray(value) ? value.length : null);
  const label = (entry) => groups.map((name) => display(entry[name])).join(' / ');
  if (params.interval) {
    const labels = result.map((interval) => interval.timeframe.start);
    if (!groups.length) return { type: 'line', labels, datasets: [{ label: params.analysis, data: result.map((i) => numeric(i.value)) }] };
    const names = [...new Set(result.flatMap((interval) => interval.value.map(label)))].slice(0, 20);
    const datasets = names.map((name) => ({
      label: name,
      data: result.map((interval) => numeric((interval.value.find((entry) => label(entry) === name) || {}).result)),
    }));
    return { type: 'line', labels, datasets };
  }
  if (groups.length)
    return {
      type: 'bar',
      labels: result.map(label),
      datasets: [{ label: params.analysis, data: result.map((entry) => numeric(entry.result)) }],
    };
  return null;
}

function render() {
  const { lastBody: body, lastParams: params } = state;
  $('views').hidden = false;
  $('view-json').textContent = JSON.stringify(body, null, 2);
  $('view-table').replaceChildren(resultTable(params, body.result));
  if (state.chart) state.chart.destroy();
  state.chart = null;
  const data = chartData(params, body.result);
  $('chart').parentElement.hidden = !data;
  $('chart-note').textContent = data ? '' : 'Charts need an interval or a group_by.';
  if (data && window.Chart) {
    state.chart = new window.Chart($('chart'), {
      type: data.type,
      data: { labels: data.labels, datasets: data.datasets.map((d) => ({ ...d, tension: 0.2, borderWidth: 2 })) },
      options: { animation: false, responsive: true, maintainAspectRatio: false, scales: { y: { beginAtZero: true } } },
    });
  }
}

function selectTab(name) {
  for (const tab of document.querySelectorAll('[role=tab]')) tab.setAttribute('aria-selected', String(tab.dataset.tab === name));
  for (const view of ['table', 'chart', 'json']) $(`view-${view}`).hidden = view !== name;
  if (name === 'chart' && state.chart) state.chart.resize();
}

// ---- start ------------------------------------------------------------------------------

async function start() {
  const settings = await (await fetch('/explorer/settings.json')).json();
  state.projectId = settings.projectId;
  $('project').textContent = `project ${settings.projectId}`;
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $('read-key').value);
    $('read-key').value = '';
    $('login-error').textContent = '';
    enter();
  });
  $('logout').addEventListener('click', () => logout());
  for (const link of document.querySelectorAll('#nav a')) {
    link.addEventListener('click', (event) => {
      event.preventDefault();
      history.pushState(null, '', link.getAttribute('href'));
      route();
    });
  }
  window.addEventListener('popstate', route);
  $('query-form').addEventListener('submit', (event) => {
    event.preventDefault();
    runQuery();
  });
  $('add-filter').addEventListener('click', () => addFilter());
  $('analysis_type').addEventListener('change', updateFields);
  $('event_collection').addEventListener('change', updateProperties);
  for (const tab of document.querySelectorAll('[role=tab]')) tab.addEventListener('click', () => selectTab(tab.dataset.tab));
  if (sessionStorage.getItem(KEY_STORAGE)) enter();
  else show('login');
}

start();
