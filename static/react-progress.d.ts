// Types for react-progress.js.
import type { Mode, ProgressError, Snapshot, WatchJobOptions } from './progress-client';

/** The two hooks useProgress needs, usually given as the React namespace. */
export interface HookRuntime {
  useState: <S>(initial: S) => [S, (next: S | ((current: S) => S)) => void];
  useEffect: (effect: () => void | (() => void), deps?: readonly unknown[]) => void;
}

export interface UseProgressOptions extends WatchJobOptions, Partial<HookRuntime> {
  /** React itself (`import * as React from 'react'`), or pass useState/useEffect. */
  React?: HookRuntime;
}

export interface ProgressState {
  /** The latest snapshot, null until the first one arrives. */
  snapshot: Snapshot | null;
  /** How updates arrive now; `ended` once the job finished or failed to load. */
  mode: Mode;
  /** Set when the job is unknown or the token refused. */
  error: ProgressError | null;
}

export function useProgress(jobId: string | null | undefined, options: UseProgressOptions): ProgressState;
