/**
 * dashboard.js: wires the page together: routing on the URL fragment, the
 * job list fed by the multiplexed stream, the job view, and the connection
 * indicator.
 *
 * Routes: `#/` (list, `?status=` filters), `#/jobs/{id}` (job view). A
 * subscriber token may ride in any fragment as `token=` (EventSource cannot
 * send headers, docs/api.md §6); it is kept for the tab and added to every request.
 *
 * @module dashboard
 */
import { JobList } from './job-list.js';
import { HUB_BASE, JobView } from './job-view.js';
import { watchAll } from './progress-client.js';

const LIST_LIMIT = 500;
const TOKEN_KEY = 'progress-hub:token';
const MODE_LABELS = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  polling: 'Polling',
  ended: 'Offline',
};

const $ = (id) => document.getElementById(id);

/** Split `#/jobs/x?token=t` (or the bare `#token=t`) into a path and its parameters. */
function parseFragment(hash) {
  const text = hash.replace(/^#/, '');
  if (!text.startsWith('/')) return { path: '/', params: new URLSearchParams(text) };
  const at = text.indexOf('?');
  return at < 0
    ? { path: text, params: new URLSearchParams() }
    : { path: text.slice(0, at), params: new URLSearchParams(text.slice(at + 1)) };
}

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function keepToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Without sessionStorage the token still travels in our links.
  }
}

function start() {
  let token = parseFragment(location.hash).params.get('token') || storedToken();
  let allMode = 'connecting';
  let lastJobShown = null;

  const indicator = $('connection');
  const list = new JobList({
    list: $('jobs'),
    template: $('job-template'),
    empty: $('empty'),
    count: $('job-count'),
    filters: $('filters'),
    token: () => token,
  });
  const view = new JobView({
    section: $('job-view'),
    title: $('job-title'),
    detail: $('job-detail'),
    log: $('event-log'),
    missing: $('job-missing'),
    result: $('result'),
    template: $('job-template'),
    onModeChange: () => showMode(),
  });

  /** The job view's connection while it follows a job, else the list's. */
  function showMode() {
    const mode = view.mode || allMode;
    if (indicator.dataset.mode === mode) return;
    indicator.dataset.mode = mode;
    indicator.querySelector('.connection-label').textContent = MODE_LABELS[mode] || mode;
  }

  const withToken = (path) => `#${path}${token ? `?token=${encodeURIComponent(token)}` : ''}`;

  function showRoute() {
    const { path, params } = parseFragment(location.hash);
    const fromUrl = params.get('token');
    if (fromUrl && fromUrl !== token) {
      token = fromUrl; // a new token only applies to streams opened from now on
    }
    if (token) keepToken(token);
    $('home-link').setAttribute('href', withToken('/'));
    $('back-link').setAttribute('href', withToken('/'));

    const match = /^\/jobs\/(.+)$/.exec(path);
    if (match) {
      const jobId = decodeURIComponent(match[1]);
      $('list-view').hidden = true;
      if (view.jobId !== jobId) view.open(jobId, token);
      document.title = `${jobId} · progress-hub`;
      lastJobShown = jobId;
      $('job-title').focus();
    } else {
      view.close();
      $('job-view').hidden = true;
      $('list-view').hidden = false;
      document.title = 'progress-hub';
      const filter = params.get('status') || '';
      list.setFilter(filter);
      const radio = document.querySelector(`#filters input[value="${CSS.escape(list.filter)}"]`);
      if (radio) radio.checked = true;
      // Back from a job view: put keyboard focus back on that job's row.
      const row = lastJobShown && document.querySelector(`.job[data-job-id="${CSS.escape(lastJobShown)}"] .job-link`);
      if (row) row.focus();
      lastJobShown = null;
    }
    showMode();
  }

  $('filters').addEventListener('change', (event) => {
    const status = event.target.value;
    const params = new URLSearchParams();
    if (status) params.set('status', status);
    if (token) params.set('token', token);
    const query = params.toString();
    // replaceState: flipping filters should not fill the back button's history.
    history.replaceState(null, '', `#/${query ? `?${query}` : ''}`);
    list.setFilter(status);
  });

  document.querySelector('.skip-link').addEventListener('click', (event) => {
    event.preventDefault(); // "#main" would otherwise be read as a route
    $('main').focus();
  });

  window.addEventListener('hashchange', showRoute);
  showRoute();

  watchAll({
    baseUrl: HUB_BASE,
    token,
    limit: LIST_LIMIT,
    onUpdate: (job) => list.upsert(job),
    onDelete: (job) => list.remove(job.job_id),
    onError: () => {
      const notice = $('list-notice');
      notice.textContent = token
        ? 'The hub refused this token (wrong or expired). Open the page with a fresh #token=….'
        : 'This hub needs a subscriber token: open the page as …/#token=YOUR_TOKEN.';
      notice.hidden = false;
    },
    // No list read of our own: watchAll reads the list whenever its stream (re)opens
    // and until the stream delivers, and drops the jobs deleted meanwhile, so rows
    // converge after a hub restart (tests/browser/test_dashboard_restart.py).
    onModeChange: (mode) => {
      allMode = mode;
      showMode();
    },
  });

  setInterval(() => {
    list.tick();
    view.tick();
  }, 1000);
}

start();
