/**
 * job-view.js: one job large, with its event log: the retained history
 * (`GET /api/jobs/{id}/history`) first, then every live update, each seq once
 * and in seq order.
 *
 * When updates arrive with a gap (polling only sees the latest snapshot, or the
 * history answer predates the stream's first event) the history is fetched
 * again to fill it, so the log stays complete whichever way updates came.
 *
 * Above the log, a chart of progress over time (progress-chart.js) drawn from
 * the same entries, redrawn at most once per animation frame. Each log line
 * shows the error only where it appears or changes, not on every later line.
 *
 * @module job-view
 */
import { mayCancel, requestCancel } from './cancel.js';
import { formatClock, formatPercent, stageAndMessage, statusBadge } from './format.js';
import { createCard, renderAgo, renderCard, setCanCancel } from './job-card.js';
import { chartModel, describeChart, renderChart } from './progress-chart.js';
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
    this.chart = this.section.querySelector('[data-chart]');
    this.chartSummary = this.section.querySelector('.chart-summary');
    this.chartFrame = 0;
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
    this.canCancel = false;
    this.card = createCard(this.template, { linked: false, onCancel: (id) => requestCancel(id, token) });
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
    this.drawChartSoon();
    mayCancel({ jobId, token }).then((allowed) => {
      if (this.jobId !== opened) return;
      this.canCancel = allowed;
      setCanCancel(this.card, allowed);
    });
  }

  /** Stop following; the section is hidden by the router. */
  close() {
    if (this.handle) this.handle.close();
    clearTimeout(this.refetchTimer);
    cancelAnimationFrame(this.chartFrame);
    this.chartFrame = 0;
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
      renderCard(this.card, job, { token: this.token, now: Date.now() / 1000, canCancel: this.canCancel });
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
    this.drawChartSoon();
    if (job.seq > this.highestSeq) {
      // The usual case: a new event goes last, after the newest logged one.
      const before = this.highestSeq ? this.entries.get(this.highestSeq) : null;
      this.highestSeq = job.seq;
      this.log.append(logItem(job, before));
      return;
    }
    const after = [...this.log.children].find((node) => Number(node.dataset.seq) > job.seq);
    const previous = after ? after.previousElementSibling : this.log.lastElementChild;
    this.log.insertBefore(logItem(job, previous ? this.entries.get(Number(previous.dataset.seq)) : null), after || null);
    // The line after it compared its error with an older event: compare again.
    if (after) after.replaceWith(logItem(this.entries.get(Number(after.dataset.seq)), job));
  }

  /** Redraw the chart at the next frame (a replayed history is many entries at once). */
  drawChartSoon() {
    if (this.chartFrame || !this.chart) return;
    this.chartFrame = requestAnimationFrame(() => {
      this.chartFrame = 0;
      const model = chartModel([...this.entries.values()]);
      renderChart(this.chart, model);
      if (this.chartSummary) this.chartSummary.textContent = describeChart(model);
    });
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

/**
 * One event-log line: time, seq, percent, then status, stage, message and error.
 * The error shows only where it appears or changes since `previous` (the
 * snapshot keeps it on every later event, docs/api.md §1).
 */
function logItem(job, previous) {
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
  const { stage, message } = stageAndMessage(job);
  const words = [stage, message].filter(Boolean).join(': ');
  if (words) text.append(` ${words}`);
  if (job.error && (!previous || previous.error !== job.error)) text.append(' ', cell('log-error', job.error));
  item.append(
    cell('log-time', formatClock(job.updated_at)),
    cell('log-seq', `#${job.seq}`),
    cell('log-percent', formatPercent(job.progress)),
    text,
  );
  return item;
}
