/**
 * job-card.js: one job's row (list) or card (job view), built from the
 * #job-template and updated in place from snapshots.
 *
 * Each card remembers what it last wrote and touches the DOM only for values
 * that changed, so a flood of updates costs a few text writes per frame.
 *
 * @module job-card
 */
import { formatAgo, formatChunks, formatEta, formatPercent, statusBadge } from './format.js';
import { isTerminal } from './progress-client.js';

/** Route of a job's own view, keeping the subscriber token in the fragment. */
export function jobHref(jobId, token) {
  return `#/jobs/${encodeURIComponent(jobId)}${token ? `?token=${encodeURIComponent(token)}` : ''}`;
}

/**
 * Clone the template into a new card.
 * @param {HTMLTemplateElement} template
 * @param {{linked: boolean}} options linked cards link to the job view
 */
export function createCard(template, { linked }) {
  const el = template.content.firstElementChild.cloneNode(true);
  const refs = {};
  for (const node of el.querySelectorAll('[data-ref]')) refs[node.dataset.ref] = node;
  if (!linked) refs.link.removeAttribute('href');
  return { el, refs, linked, shown: new Map(), snapshot: null };
}

/** Write `value` through `write` unless the card already shows it. */
function put(card, key, value, write) {
  if (card.shown.get(key) === value) return;
  card.shown.set(key, value);
  write(value);
}

function setText(card, key, node, text) {
  put(card, key, text, (value) => {
    node.textContent = value;
  });
}

/**
 * Bring the card up to date with `job`.
 * @param {object} card from createCard
 * @param {import('./progress-client').Snapshot} job
 * @param {{token: string|null, now: number}} context now in Unix seconds
 */
export function renderCard(card, job, { token, now }) {
  const { refs, el } = card;
  card.snapshot = job;
  if (card.linked) put(card, 'href', jobHref(job.job_id, token), (href) => refs.link.setAttribute('href', href));
  put(card, 'job', job.job_id, (id) => {
    el.dataset.jobId = id;
    refs.id.textContent = id;
  });
  setText(card, 'pipeline', refs.pipeline, job.pipeline || '');

  const badge = statusBadge(job);
  setText(card, 'badge', refs.badge, badge.label);
  put(card, 'tone', badge.tone, (tone) => {
    el.dataset.tone = tone;
  });
  put(card, 'status', job.status, (status) => {
    el.dataset.status = status;
  });

  const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
  const percent = formatPercent(progress);
  put(card, 'progress', progress, (value) => {
    // CSSOM writes are allowed under the hub's CSP; style attributes are not.
    refs.fill.style.transform = `scaleX(${value / 100})`;
    refs.bar.setAttribute('aria-valuenow', String(Math.floor(value)));
  });
  setText(card, 'percent', refs.percent, percent);
  put(card, 'valuetext', `${percent}${job.stage_label ? `, ${job.stage_label}` : ''}`, (text) => {
    refs.bar.setAttribute('aria-valuetext', text);
    refs.bar.setAttribute('aria-label', `Progress of ${job.job_id}`);
  });

  setText(card, 'stage', refs.stage, job.stage_label || job.stage || '');
  setText(card, 'message', refs.message, job.message || '');
  const chunks = formatChunks(job.chunks);
  setText(card, 'chunks', refs.chunks, chunks);
  put(card, 'chunksShown', Boolean(chunks), (shown) => {
    refs.chunksItem.hidden = !shown;
  });
  setText(card, 'eta', refs.eta, isTerminal(job.status) ? '' : formatEta(job.eta_seconds));
  const error = job.status === 'failed' || job.error ? job.error || 'Failed without an error message.' : '';
  setText(card, 'error', refs.error, error);
  put(card, 'errorShown', Boolean(error), (shown) => {
    refs.error.hidden = !shown;
  });
  renderAgo(card, now);
}

/** Refresh only the "updated … ago" text; called once a second. */
export function renderAgo(card, now) {
  if (card.snapshot) setText(card, 'ago', card.refs.ago, `updated ${formatAgo(card.snapshot.updated_at, now)}`);
}
