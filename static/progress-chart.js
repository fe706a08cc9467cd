/**
 * progress-chart.js: a job's progress over time as inline SVG, no library.
 *
 * `chartModel(events)` turns the job's snapshots (the replayed history, then
 * live ones; any order, each seq once) into what is drawn: one point per event
 * (percent against `updated_at`), the stages as bands of time, retries and
 * failed chunks as marks, and the ETA as a dashed projection to 100 % from the
 * newest point of a job still running. It is a pure function, unit-tested under
 * node --test (tests/js/progress-chart.test.js).
 *
 * `renderChart(svg, model)` redraws the SVG from a model. Colours come from
 * dashboard.css classes: the hub's CSP forbids style attributes.
 *
 * @module progress-chart
 */

const SVG = 'http://www.w3.org/2000/svg';
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Drawing area inside the 720 × 220 viewBox (index.html). */
export const LAYOUT = Object.freeze({ width: 720, height: 220, left: 44, right: 12, top: 22, bottom: 26 });

/**
 * What the chart shows for `events`.
 * @param {Array<object>} events snapshots of one job
 */
export function chartModel(events) {
  const sorted = [...events].sort((a, b) => a.seq - b.seq);
  const points = sorted.map((job) => ({ seq: job.seq, t: job.updated_at, progress: clamp(job.progress), status: job.status }));
  const bands = [];
  const retries = [];
  const failures = [];
  let previous = null;
  for (const job of sorted) {
    const stage = job.stage_label || job.stage;
    const last = bands[bands.length - 1];
    if (stage && (!last || last.key !== job.stage)) {
      if (last) last.end = job.updated_at;
      bands.push({ key: job.stage, label: stage, start: job.updated_at, end: job.updated_at });
    } else if (last) {
      last.end = job.updated_at;
    }
    const retried = job.status === 'retrying' && (!previous || previous.status !== 'retrying' || previous.attempt !== job.attempt);
    if (retried) retries.push({ seq: job.seq, t: job.updated_at, progress: clamp(job.progress), attempt: job.attempt, maxAttempts: job.max_attempts });
    const failed = job.chunks ? job.chunks.failed : 0;
    const failedBefore = previous && previous.chunks ? previous.chunks.failed : 0;
    if (failed > failedBefore) {
      failures.push({ seq: job.seq, t: job.updated_at, progress: clamp(job.progress), failed, error: job.error || '' });
    }
    previous = job;
  }
  const newest = sorted[sorted.length - 1];
  let eta = null;
  if (newest && !TERMINAL.has(newest.status) && Number.isFinite(newest.eta_seconds) && newest.eta_seconds > 0) {
    eta = { from: { t: newest.updated_at, progress: clamp(newest.progress) }, to: { t: newest.updated_at + newest.eta_seconds, progress: 100 } };
  }
  const start = sorted.length ? Math.min(sorted[0].created_at ?? sorted[0].updated_at, sorted[0].updated_at) : 0;
  const end = Math.max(start + 1, newest ? newest.updated_at : start, eta ? eta.to.t : start);
  return { start, end, points, bands, retries, failures, eta };
}

function clamp(progress) {
  return Math.max(0, Math.min(100, Number(progress) || 0));
}

/** "12 s", "3 min 5 s", "1 h 4 min": a span of seconds for axis labels. */
export function formatSpan(seconds) {
  const total = Math.max(0, Math.round(seconds));
  if (total < 60) return `${total} s`;
  if (total < 3600) {
    const s = total % 60;
    return `${Math.floor(total / 60)} min${s ? ` ${s} s` : ''}`;
  }
  const m = Math.floor((total % 3600) / 60);
  return `${Math.floor(total / 3600)} h${m ? ` ${m} min` : ''}`;
}

/** Map a model's time and percent onto the SVG's coordinates. */
export function scales(model, layout = LAYOUT) {
  const plotWidth = layout.width - layout.left - layout.right;
  const plotHeight = layout.height - layout.top - layout.bottom;
  const span = model.end - model.start || 1;
  return {
    x: (t) => layout.left + ((t - model.start) / span) * plotWidth,
    y: (progress) => layout.top + (1 - progress / 100) * plotHeight,
  };
}

function node(name, attributes = {}, text = '') {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text) element.textContent = text;
  return element;
}

const round = (value) => Math.round(value * 10) / 10;

/**
 * Redraw `svg` for `model`.
 * @param {SVGSVGElement} svg
 * @param {ReturnType<typeof chartModel>} model
 */
export function renderChart(svg, model) {
  const layout = LAYOUT;
  const { x, y } = scales(model, layout);
  const bottom = layout.height - layout.bottom;
  const right = layout.width - layout.right;
  const parts = [];

  model.bands.forEach((band, index) => {
    const from = x(band.start);
    const width = Math.max(1, x(band.end) - from);
    const group = node('g', { class: `chart-band${index % 2 ? ' chart-band--alt' : ''}`, 'data-stage': band.key });
    group.append(node('rect', { x: round(from), y: layout.top, width: round(width), height: bottom - layout.top }));
    group.append(node('title', {}, band.label));
    // About 6.5 units per character at this size: shortened to fit, or left out.
    const fits = Math.floor((width - 8) / 6.5);
    if (fits >= 4) {
      const text = band.label.length <= fits ? band.label : `${band.label.slice(0, fits - 1)}…`;
      group.append(node('text', { class: 'chart-band-label', x: round(from + 4), y: layout.top - 6 }, text));
    }
    parts.push(group);
  });

  for (const percent of [0, 25, 50, 75, 100]) {
    parts.push(node('line', { class: 'chart-grid', x1: layout.left, x2: right, y1: y(percent), y2: y(percent) }));
    parts.push(node('text', { class: 'chart-axis', x: layout.left - 6, y: y(percent) + 4, 'text-anchor': 'end' }, `${percent}%`));
  }
  parts.push(node('text', { class: 'chart-axis', x: layout.left, y: layout.height - 8 }, '0 s'));
  parts.push(node('text', { class: 'chart-axis', x: right, y: layout.height - 8, 'text-anchor': 'end' }, formatSpan(model.end - model.start)));

  if (model.eta) {
    const { from, to } = model.eta;
    const projection = node('line', { class: 'chart-eta', x1: round(x(from.t)), y1: round(y(from.progress)), x2: round(x(to.t)), y2: round(y(to.progress)), 'stroke-dasharray': '6 4' });
    projection.append(node('title', {}, `Expected to finish in about ${formatSpan(to.t - from.t)}`));
    parts.push(projection);
  }
  if (model.points.length) {
    const path = model.points.map((p) => `${round(x(p.t))},${round(y(p.progress))}`).join(' ');
    parts.push(node('polyline', { class: 'chart-line', points: path }));
  }
  for (const point of model.points) {
    const dot = node('circle', { class: 'chart-point', r: 3, cx: round(x(point.t)), cy: round(y(point.progress)), 'data-seq': point.seq, 'data-progress': point.progress });
    dot.append(node('title', {}, `#${point.seq}: ${Math.floor(point.progress)}%`));
    parts.push(dot);
  }
  for (const retry of model.retries) {
    const cx = x(retry.t);
    const cy = y(retry.progress);
    const mark = node('path', { class: 'chart-retry', d: `M${round(cx)} ${round(cy - 12)} l6 -9 h-12 z`, 'data-seq': retry.seq });
    const of = retry.maxAttempts ? `/${retry.maxAttempts}` : '';
    mark.append(node('title', {}, retry.attempt ? `Retry, attempt ${retry.attempt}${of}` : 'Retry'));
    parts.push(node('line', { class: 'chart-retry-line', x1: round(cx), x2: round(cx), y1: layout.top, y2: bottom }), mark);
  }
  for (const failure of model.failures) {
    const cx = round(x(failure.t));
    const cy = round(y(failure.progress));
    const mark = node('path', { class: 'chart-failure', d: `M${cx - 5} ${cy - 5} l10 10 M${cx + 5} ${cy - 5} l-10 10`, 'data-seq': failure.seq });
    mark.append(node('title', {}, failure.error || `${failure.failed} chunk${failure.failed === 1 ? '' : 's'} failed`));
    parts.push(mark);
  }
  svg.replaceChildren(...parts);
}

/** One sentence for screen readers and the caption: where the job is, and since when. */
export function describeChart(model) {
  const newest = model.points[model.points.length - 1];
  if (!newest) return 'No events yet.';
  const elapsed = formatSpan(newest.t - model.start);
  const parts = [`${Math.floor(newest.progress)}% after ${elapsed}`];
  if (model.retries.length) parts.push(`${model.retries.length} ${model.retries.length === 1 ? 'retry' : 'retries'}`);
  if (model.failures.length) {
    const failed = model.failures[model.failures.length - 1].failed;
    parts.push(`${failed} failed chunk${failed === 1 ? '' : 's'}`);
  }
  if (model.eta) parts.push(`about ${formatSpan(model.eta.to.t - model.eta.from.t)} to go (dashed)`);
  return `${parts.join(', ')}.`;
}
