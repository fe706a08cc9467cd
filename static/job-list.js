/**
 * job-list.js: the live list of jobs, newest first, filtered by status.
 *
 * Updates are only recorded when they arrive; the DOM is touched once per
 * animation frame for the jobs that changed since the last frame (docs/dashboard.md:
 * 500 jobs without jank). Rows never move once placed, because created_at,
 * the sort key, never changes.
 *
 * @module job-list
 */
import { mayCancel, requestCancel } from './cancel.js';
import { createCard, renderAgo, renderCard, setCanCancel } from './job-card.js';

const ACTIVE = new Set(['queued', 'running', 'retrying']);
const FILTERS = ['', 'active', 'queued', 'running', 'retrying', 'completed', 'failed', 'cancelled'];

/** True when a job with `status` is shown under `filter` ('' shows all). */
export function matchesFilter(status, filter) {
  if (!filter) return true;
  if (filter === 'active') return ACTIVE.has(status);
  return status === filter;
}

/** Newer first; equal times fall back to the id so the order is stable. */
function newerFirst(a, b) {
  return b.created_at - a.created_at || (a.job_id < b.job_id ? -1 : a.job_id > b.job_id ? 1 : 0);
}

export class JobList {
  /**
   * @param {object} parts
   * @param {HTMLOListElement} parts.list
   * @param {HTMLTemplateElement} parts.template
   * @param {HTMLElement} parts.empty shown when no job matches
   * @param {HTMLElement} parts.count "(n)" next to the heading
   * @param {HTMLElement} parts.filters holds [data-count] badges per filter
   * @param {() => string|null} parts.token
   */
  constructor({ list, template, empty, count, filters, token }) {
    Object.assign(this, { list, template, empty, count, filters, token });
    this.cards = new Map(); // job_id → card
    this.order = []; // snapshots of placed jobs, newest first
    this.pending = new Map(); // job_id → latest snapshot not yet drawn
    this.removals = new Set();
    this.filter = '';
    this.frame = 0;
    this.canCancel = false; // until the hub says this page may (cancel.js)
    mayCancel({ token: this.token() }).then((allowed) => {
      this.canCancel = allowed;
      for (const card of this.cards.values()) setCanCancel(card, allowed);
    });
  }

  /** Record a snapshot; drawn at the next animation frame. Older seqs are ignored. */
  upsert(job) {
    const current = this.pending.get(job.job_id) || (this.cards.get(job.job_id) || {}).snapshot;
    if (current && job.seq <= current.seq && job.created_at === current.created_at) return;
    this.removals.delete(job.job_id);
    this.pending.set(job.job_id, job);
    this.schedule();
  }

  /** Drop a deleted or expired job at the next frame. */
  remove(jobId) {
    this.pending.delete(jobId);
    this.removals.add(jobId);
    this.schedule();
  }

  /** Show only jobs matching `filter`; an unknown filter shows all. */
  setFilter(filter) {
    this.filter = FILTERS.includes(filter) ? filter : '';
    for (const card of this.cards.values()) card.el.hidden = !matchesFilter(card.snapshot.status, this.filter);
    this.drawCounts();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Apply every pending change in one go. */
  flush() {
    this.frame = 0;
    const now = Date.now() / 1000;
    for (const jobId of this.removals) this.drop(jobId);
    this.removals.clear();
    for (const job of this.pending.values()) {
      let card = this.cards.get(job.job_id);
      if (card && card.snapshot.created_at !== job.created_at) {
        this.drop(job.job_id); // deleted and created again: it belongs at a new place
        card = undefined;
      }
      if (!card) card = this.place(job);
      renderCard(card, job, { token: this.token(), now, canCancel: this.canCancel });
      card.el.hidden = !matchesFilter(job.status, this.filter);
    }
    this.pending.clear();
    this.drawCounts();
  }

  /** Create a row and insert it at its sorted position (binary search). */
  place(job) {
    const card = createCard(this.template, {
      linked: true,
      onCancel: (jobId) => requestCancel(jobId, this.token()),
    });
    card.snapshot = job;
    let low = 0;
    let high = this.order.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (newerFirst(this.order[mid], job) < 0) low = mid + 1;
      else high = mid;
    }
    const before = this.order[low];
    this.list.insertBefore(card.el, before ? this.cards.get(before.job_id).el : null);
    this.order.splice(low, 0, job);
    this.cards.set(job.job_id, card);
    return card;
  }

  drop(jobId) {
    const card = this.cards.get(jobId);
    if (!card) return;
    card.el.remove();
    this.cards.delete(jobId);
    const index = this.order.findIndex((job) => job.job_id === jobId);
    if (index >= 0) this.order.splice(index, 1);
  }

  drawCounts() {
    const counts = new Map(FILTERS.map((filter) => [filter, 0]));
    for (const card of this.cards.values()) {
      for (const filter of FILTERS) {
        if (matchesFilter(card.snapshot.status, filter)) counts.set(filter, counts.get(filter) + 1);
      }
    }
    for (const node of this.filters.querySelectorAll('[data-count]')) {
      const text = String(counts.get(node.dataset.count) || 0);
      if (node.textContent !== text) node.textContent = text;
    }
    const visible = counts.get(this.filter);
    const countText = this.cards.size ? `(${visible}${this.filter ? ` of ${this.cards.size}` : ''})` : '';
    if (this.count.textContent !== countText) this.count.textContent = countText;
    this.empty.hidden = visible > 0;
  }

  /** Refresh the "updated … ago" texts of the rows on show. */
  tick() {
    const now = Date.now() / 1000;
    for (const card of this.cards.values()) if (!card.el.hidden) renderAgo(card, now);
  }
}
