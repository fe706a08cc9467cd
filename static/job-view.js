/**
 * job-view.js: one job large, with its event log: the retained history
 * (`GET /api/jobs/{id}/history`) first, then every live update, each seq once
 * and in seq order.
 *
 * When updates arrive with a gap (polling only sees the latest snapshot, or the
 * history answer predates the stream's first event) the history is fetched
 * again to fill it, so the log stays complete whichever way updates came.
 *
 * @module job-view
 */
import { formatClock, formatPercent, statusBadge } from './format.js';
import { createCard, renderAgo, renderCard } from './job-card.js';
import { buildUrl, watchJob } from './progress-client.js';

const GAP_REFETCH_DELAY_MS = 300;

/**
 * The hub's path prefix: the directory this page was served from, so that the
 * dashboard works at `/` and mounted under a prefix (`/progress/`, docs/production.md).
 */
export const HUB_BASE = new URL('.', document.baseURI).pathname.replace(/\/+$/, '');

export class JobView {
  /**
   * @param {object} parts
   * @param {HTMLElement} parts.section
   * @param {HTMLElement} parts.title
   * @param {HTMLElement} parts.detail list holding the single card
   * @param {HTMLElement} parts.log the event log list
   * @param {HTMLElement} parts.missing notice for an unknown job
   * @param {HTMLElement} parts.result paragraph holding the result link
   * @param {HTMLTemplateElement} parts.template
   * @param {(mode: string) => void} parts.onModeChange
   */
  constructor(parts) {
    Object.assign(this, parts);
    this.jobId = null;
    this.handle = null;
  }

  /** Show `jobId`, following it live; replaces whatever job was shown. */
  open(jobId, token) {
    this.close();
    this.jobId = jobId;
    this.token = token;
    this.entries = new Map(); // seq → snapshot in the log
    this.highestSeq = 0;
    this.refetchTimer = 0;
    this.historyLoaded = false;
    this.title.textContent = jobId;
    this.missing.hidden = true;
    this.result.hidden = true;
    this.log.replaceChildren();
    this.card = createCard(this.template, { linked: false });
    this.detail.replaceChildren(this.card.el);
    this.card.el.hidden = true;
    this.section.hidden = false;

    const opened = jobId;
    this.handle = watchJob(jobId, {
      baseUrl: HUB_BASE,
      token,
      remember: false, // the URL fragment is what brings this view back after a reload
      onUpdate: (job) => this.jobId === opened && this.update(job),
      onEnd: (job, reason) => {
        if (this.jobId !== opened) return;
        if (reason === 'deleted') this.showMissing(`Job ${jobId} was deleted.`);
        else if (job) this.update(job);
      },
      onError: (error) => this.jobId === opened && this.showMissing(error.message),
      onModeChange: (mode) => this.jobId === opened && this.onModeChange(mode),
    });
    this.loadHistory();
  }

  /** Stop following; the section is hidden by the router. */
  close() {
    if (this.handle) this.handle.close();
    clearTimeout(this.refetchTimer);
    this.handle = null;
    this.jobId = null;
  }

  /** The follow mode, or null when nothing is followed live. */
  get mode() {
    return this.handle && this.handle.mode !== 'ended' ? this.handle.mode : null;
  }

  async loadHistory() {
    const jobId = this.jobId;
    const url = buildUrl(HUB_BASE, `/api/jobs/${encodeURIComponent(jobId)}/history`, { token: this.token });
    let events;
    try {
      const response = await fetch(url, { cache: 'no-store' });
      if (!response.ok) return; // 404 is reported by the watcher; no history is no log
      ({ events } = await response.json());
    } catch {
      return; // the live part still fills the log, and gaps trigger another try
    }
    if (this.jobId !== jobId || !Array.isArray(events)) return;
    this.historyLoaded = true;
    for (const job of events) this.addEntry(job);
  }

  update(job) {
    const newest = this.card.snapshot;
    if (!newest || job.seq >= newest.seq || job.created_at !== newest.created_at) {
      renderCard(this.card, job, { token: this.token, now: Date.now() / 1000 });
      this.card.el.hidden = false;
      this.result.hidden = !job.has_result;
      if (job.has_result) {
        const href = buildUrl(HUB_BASE, `/api/jobs/${encodeURIComponent(job.job_id)}/result`, { token: this.token });
        this.result.querySelector('a').setAttribute('href', href);
      }
    }
    const highest = this.highestSeq;
    this.addEntry(job);
    if (this.historyLoaded && highest && job.seq > highest + 1) this.refetchSoon();
  }

  refetchSoon() {
    if (this.refetchTimer) return;
    this.refetchTimer = setTimeout(() => {
      this.refetchTimer = 0;
      this.loadHistory();
    }, GAP_REFETCH_DELAY_MS);
  }

  /** Insert one log line at its seq position; a seq already logged is skipped. */
  addEntry(job) {
    if (this.entries.has(job.seq)) return;
    this.entries.set(job.seq, job);
    const item = logItem(job);
    if (job.seq > this.highestSeq) {
      this.highestSeq = job.seq; // the usual case: a new event goes last
      this.log.append(item);
      return;
    }
    const after = [...this.log.children].find((node) => Number(node.dataset.seq) > job.seq);
    this.log.insertBefore(item, after || null);
  }

  showMissing(message) {
    this.missing.textContent = message;
    this.missing.hidden = false;
  }

  /** Refresh the "updated … ago" text. */
  tick() {
    if (this.card && this.card.snapshot) renderAgo(this.card, Date.now() / 1000);
  }
}

/** One event-log line: time, seq, percent, then status, stage, message and error. */
function logItem(job) {
  const item = document.createElement('li');
  item.dataset.seq = String(job.seq);
  const cell = (className, text) => {
    const span = document.createElement('span');
    span.className = className;
    span.textContent = text;
    return span;
  };
  const text = cell('log-text', '');
  text.append(cell('log-status', statusBadge(job).label));
  const words = [job.stage_label || job.stage, job.message].filter(Boolean).join(': ');
  if (words) text.append(` ${words}`);
  if (job.error) text.append(' ', cell('log-error', job.error));
  item.append(
    cell('log-time', formatClock(job.updated_at)),
    cell('log-seq', `#${job.seq}`),
    cell('log-percent', formatPercent(job.progress)),
    text,
  );
  return item;
}
