// Types for progress-client.js (docs/api.md §1 and §3).

export type JobStatus = 'queued' | 'running' | 'retrying' | 'completed' | 'failed' | 'cancelled';

/** How the client currently gets updates. */
export type Mode = 'connecting' | 'live' | 'reconnecting' | 'polling' | 'ended';

/** Where a delivered snapshot came from. */
export type UpdateSource = 'snapshot' | 'progress' | 'poll';

/** Why `onEnd` was called. */
export type EndReason = 'completed' | 'failed' | 'cancelled' | 'deleted';

export interface ChunkPosition {
  index: number;
  page_start: number | null;
  page_end: number | null;
}

export interface Chunks {
  total: number;
  completed: number;
  failed: number;
  current: ChunkPosition | null;
}

/** One full snapshot of a job: any single event is enough to render it. */
export interface Snapshot {
  job_id: string;
  seq: number;
  status: JobStatus;
  pipeline: string | null;
  stage: string | null;
  stage_label: string | null;
  progress: number;
  message: string;
  chunks: Chunks | null;
  attempt: number | null;
  max_attempts: number | null;
  eta_seconds: number | null;
  error: string | null;
  meta: Record<string, unknown>;
  has_result: boolean;
  created_at: number;
  updated_at: number;
  stalled: boolean;
  /** Someone asked to cancel the job; its worker has not ended it yet (docs/api.md §9). */
  cancel_requested: boolean;
}

/** Replaceable pieces of the runtime, for tests and non-browser hosts. */
export interface ClientEnv {
  EventSource: new (url: string) => EventSource;
  fetch: typeof fetch;
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (id: unknown) => void;
  now: () => number;
  random: () => number;
  document: Pick<Document, 'visibilityState' | 'addEventListener' | 'removeEventListener'> | null;
  storage: Pick<Storage, 'getItem' | 'setItem'> | null;
}

export interface Tuning {
  /** Origin of the hub; '' means same origin. */
  baseUrl?: string;
  /** Subscriber token, sent as `?token=` on every request. */
  token?: string | null;
  pollIntervalMs?: number;
  maxStreamErrors?: number;
  errorWindowMs?: number;
  openTimeoutMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  streamRetryMs?: number;
  streamRetryMaxMs?: number;
  idlePauseMs?: number;
  env?: Partial<ClientEnv>;
}

export interface WatchJobOptions extends Tuning {
  onUpdate?: (snapshot: Snapshot, source: UpdateSource) => void;
  onEnd?: (snapshot: Snapshot | null, reason: EndReason) => void;
  onError?: (error: ProgressError) => void;
  onModeChange?: (mode: Mode, previous: Mode) => void;
  /** Remember the job in localStorage until it ends or is closed (default true). */
  remember?: boolean;
}

export interface WatchAllOptions extends Tuning {
  /** Only these job ids (`?job=a&job=b`). */
  jobs?: string[];
  /** Page size of the polling fallback (`GET /api/jobs?limit=`), default 500. */
  limit?: number;
  onUpdate?: (snapshot: Snapshot, source: UpdateSource) => void;
  /** A deleted or expired job; while polling only `job_id` and `seq` are certain. */
  onDelete?: (snapshot: Pick<Snapshot, 'job_id' | 'seq'> & Partial<Snapshot>) => void;
  onError?: (error: ProgressError) => void;
  onModeChange?: (mode: Mode, previous: Mode) => void;
}

export interface JobHandle {
  readonly jobId: string;
  readonly mode: Mode;
  readonly snapshot: Snapshot | null;
  /** Stop following and forget the job. */
  close(): void;
}

export interface AllHandle {
  readonly mode: Mode;
  close(): void;
}

export class ProgressError extends Error {
  readonly kind: 'not_found' | 'forbidden';
  readonly status: number;
  constructor(kind: 'not_found' | 'forbidden', status: number, message: string);
}

export const TERMINAL_STATUSES: readonly JobStatus[];
export const DEFAULTS: Readonly<Required<Omit<Tuning, 'env'>> & { remember: boolean }>;

export function isTerminal(status: string): boolean;
export function backoffDelay(failures: number, baseMs: number, maxMs: number, random?: () => number): number;
export function buildUrl(
  baseUrl: string,
  path: string,
  params?: Record<string, string | number | null | undefined | Array<string | number>>,
): string;

export function watchJob(jobId: string, options?: WatchJobOptions): JobHandle;
export function watchAll(options?: WatchAllOptions): AllHandle;
export function followedJobs(options?: Pick<Tuning, 'baseUrl' | 'env'>): string[];
export function resumeFollowed(options?: WatchJobOptions): JobHandle[];
