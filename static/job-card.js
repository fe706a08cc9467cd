/**
 * job-card.js: one job's row (list) or card (job view), built from the
 * #job-template and updated in place from snapshots.
 *
 * Each card remembers what it last wrote and touches the DOM only for values
 * that changed, so a flood of updates costs a few text writes per frame.
 *
 * A card of an active job gets a Cancel button when the page may cancel it
 * (`context.canCancel`, from cancel.js): Cancel asks for confirmation in
 * place, "Yes, cancel it" sends the request, and the badge reads "Cancelling…"
 * once the hub's snapshot says `cancel_requested`, until the worker ends the job.
 *
 * @module job-card
 */
import { formatAgo, formatChunks, formatEta, formatPercent, stageAndMessage, statusBadge } from './format.js';
import { isTerminal } from './progress-client.js';

/** Route of a job's own view, keeping the subscriber token in the fragment. */
export function jobHref(jobId, token) {
  return `#/jobs/${encodeURIComponent(jobId)}${token ? `?token=${encodeURIComponent(token)}` : ''}`;
}

/**
 * Clone the template into a new card.
 * @param {HTMLTemplateElement} template
 * @param {{linked: boolean, onCancel?: (jobId: string) => Promise<unknown>}} options
 *   linked cards link to the job view; onCancel sends a confirmed cancel request
 */
export function createCard(template, { linked, onCancel = null }) {
  const el = template.content.firstElementChild.cloneNode(true);
  const refs = {};
  for (const node of el.querySelectorAll('[data-ref]')) refs[node.dataset.ref] = node;
  if (!linked) refs.link.removeAttribute('href');
  const card = {
    el,
    refs,
    linked,
    shown: new Map(),
    snapshot: null,
    canCancel: false,
    cancel: { confirming: false, sending: false, sent: false, error: '' },
  };
  if (onCancel && refs.cancel) wireCancel(card, onCancel);
  return card;
}

/** The Cancel button, its confirmation and the request, for one card. */
function wireCancel(card, onCancel) {
  const { refs, cancel } = card;
  refs.cancel.addEventListener('click', () => {
    Object.assign(cancel, { confirming: true, error: '' });
    drawActions(card);
    refs.confirmNo.focus(); // the safe answer first: Enter keeps the job running
  });
  refs.confirmNo.addEventListener('click', () => {
    cancel.confirming = false;
    drawActions(card);
    refs.cancel.focus();
  });
  refs.confirmYes.addEventListener('click', async () => {
    Object.assign(cancel, { confirming: false, sending: true });
    drawActions(card);
    try {
      await onCancel(card.snapshot.job_id);
      cancel.sent = true; // the snapshot with cancel_requested is on its way
    } catch (error) {
      cancel.error = `Could not cancel: ${error.message}`;
    }
    cancel.sending = false;
    drawActions(card);
  });
}

/** Show the Cancel button, its confirmation, or neither, for the card's job. */
function drawActions(card) {
  const { refs, cancel, snapshot: job } = card;
  if (!refs.actions || !job) return;
  const offer = card.canCancel && !isTerminal(job.status) && !job.cancel_requested && !cancel.sent;
  if (!offer) cancel.confirming = false;
  const state = `${offer}|${cancel.confirming}|${cancel.sending}|${cancel.error}`;
  put(card, 'actions', state, () => {
    refs.actions.hidden = !offer;
    refs.cancel.hidden = cancel.confirming;
    refs.cancel.disabled = cancel.sending;
    refs.cancel.textContent = cancel.sending ? 'Cancelling…' : 'Cancel';
    refs.cancel.setAttribute('aria-label', `Cancel job ${job.job_id}`);
    refs.confirm.hidden = !cancel.confirming;
    refs.confirm.setAttribute('aria-label', `Cancel job ${job.job_id}?`);
    refs.cancelError.textContent = cancel.error;
    refs.cancelError.hidden = !cancel.error;
  });
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
 * @param {{token: string|null, now: number, canCancel?: boolean}} context now in Unix seconds
 */
export function renderCard(card, job, { token, now, canCancel = false }) {
  const { refs, el } = card;
  card.snapshot = job;
  card.canCancel = canCancel;
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

  const words = stageAndMessage(job);
  setText(card, 'stage', refs.stage, words.stage);
  setText(card, 'message', refs.message, words.message);
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
  drawActions(card);
  renderAgo(card, now);
}

/** Apply a change of the page's right to cancel without a new snapshot. */
export function setCanCancel(card, canCancel) {
  card.canCancel = canCancel;
  drawActions(card);
}

/** Refresh only the "updated … ago" text; called once a second. */
export function renderAgo(card, now) {
  if (card.snapshot) setText(card, 'ago', card.refs.ago, `updated ${formatAgo(card.snapshot.updated_at, now)}`);
}
