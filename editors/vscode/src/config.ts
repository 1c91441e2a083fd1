// Pure helpers of the extension: settings → server options, command arguments, status text.
// Nothing here imports `vscode`, so the unit tests run under plain `node --test`.

import * as os from 'os';
import * as path from 'path';

/** Options the server reads from `initializationOptions` and `workspace/didChangeConfiguration`. */
export interface ServerOptions {
  model?: string;
  steps?: number;
  maxSpanTokens?: number;
  candidates?: number;
  temperature?: number;
  contextTokens?: number;
  verify?: boolean;
  debounceMs?: number;
}

type Kind = 'path' | 'posint' | 'nonnegint' | 'nonnegnumber' | 'boolean';

/** Each server option, the kind of value it takes. The setting is `diffusionLs.<key>`. */
export const SERVER_OPTION_KINDS: Readonly<Record<keyof ServerOptions, Kind>> = {
  model: 'path',
  steps: 'posint',
  maxSpanTokens: 'posint',
  candidates: 'posint',
  temperature: 'nonnegnumber',
  contextTokens: 'posint',
  verify: 'boolean',
  debounceMs: 'nonnegint',
};

export const SERVER_OPTION_KEYS = Object.keys(SERVER_OPTION_KINDS) as (keyof ServerOptions)[];

/** Settings section of the extension; every setting is `diffusionLs.<name>`. */
export const SECTION = 'diffusionLs';

/** Reads one setting (relative to `diffusionLs.`); `vscode.WorkspaceConfiguration.get` fits. */
export type SettingReader = (key: string) => unknown;

export interface OptionsResult {
  options: ServerOptions;
  /** Human-readable problems with settings that were dropped (shown as a warning). */
  problems: string[];
}

/** `~`, `${userHome}` and `${workspaceFolder}` in a path setting; relative paths are taken from the workspace folder. */
export function expandPath(value: string, workspaceFolder?: string, home: string = os.homedir()): string {
  let p = value.trim();
  if (p === '~') {
    p = home;
  } else if (p.startsWith('~/')) {
    p = path.join(home, p.slice(2));
  }
  p = p.replace(/\$\{userHome\}/g, home);
  if (workspaceFolder !== undefined) {
    p = p.replace(/\$\{workspaceFolder\}/g, workspaceFolder);
    if (!path.isAbsolute(p)) {
      p = path.join(workspaceFolder, p);
    }
  }
  return p;
}

/**
 * Settings → the server's options. Unset (null/undefined/empty) settings are left out so the
 * server keeps its own defaults; values of the wrong type are dropped and reported.
 */
export function toServerOptions(read: SettingReader, workspaceFolder?: string): OptionsResult {
  const options: ServerOptions = {};
  const problems: string[] = [];
  const out = options as Record<string, unknown>;
  for (const key of SERVER_OPTION_KEYS) {
    const value = read(key);
    if (value === undefined || value === null || value === '') {
      continue;
    }
    const kind = SERVER_OPTION_KINDS[key];
    const bad = (want: string) => problems.push(`${SECTION}.${key}: expected ${want}, got ${JSON.stringify(value)}`);
    switch (kind) {
      case 'path':
        if (typeof value !== 'string') {
          bad('a folder path');
        } else {
          out[key] = expandPath(value, workspaceFolder);
        }
        break;
      case 'posint':
      case 'nonnegint': {
        const min = kind === 'posint' ? 1 : 0;
        if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
          bad(min === 1 ? 'a positive integer' : 'an integer >= 0');
        } else {
          out[key] = value;
        }
        break;
      }
      case 'nonnegnumber':
        if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
          bad('a number >= 0');
        } else {
          out[key] = value;
        }
        break;
      case 'boolean':
        if (typeof value !== 'boolean') {
          bad('true or false');
        } else {
          out[key] = value;
        }
        break;
    }
  }
  return { options, problems };
}

/** Body of `workspace/didChangeConfiguration`: the same options as at start, under `settings`. */
export function didChangeConfigurationParams(options: ServerOptions): { settings: ServerOptions } {
  return { settings: options };
}

/** True when `event.affectsConfiguration` means the server must restart rather than be told. */
export const RESTART_SETTINGS = ['serverPath', 'serverArgs', 'languages'];

/** The server command: `diffusion-ls` looked up on PATH unless the setting names a file. */
export function serverCommand(serverPath: unknown, workspaceFolder?: string): string {
  if (typeof serverPath !== 'string' || serverPath.trim() === '') {
    return 'diffusion-ls';
  }
  const p = serverPath.trim();
  // A bare name is looked up on PATH; anything with a separator is a path.
  if (!p.includes('/') && !p.includes('\\') && !p.startsWith('~')) {
    return p;
  }
  return expandPath(p, workspaceFolder);
}

// ---- workspace/executeCommand arguments -------------------------------------------------------

export interface LspPosition {
  line: number;
  character: number;
}
export interface LspRange {
  start: LspPosition;
  end: LspPosition;
}

/** Server command ids (from `executeCommandProvider.commands`, server/src/lsp.rs). */
export const SERVER_COMMANDS = {
  fillSelection: 'diffusion-ls.fillSelection',
  rewriteFunction: 'diffusion-ls.rewriteFunction',
  accept: 'diffusion-ls.acceptCompletion',
} as const;

/** Custom request: waits for the model to load, then `{ ready, model }`. */
export const STATUS_REQUEST = 'diffusionLs/status';

export interface StatusResult {
  ready: boolean;
  model?: string;
}

/**
 * The one argument of the fill / rewrite commands: `{ uri, range }` for fill (the selection),
 * `{ uri, position }` for rewrite (a position inside the function). Both get both, plus the
 * document version, so either command reads what it needs.
 */
export interface EditCommandArgs {
  uri: string;
  version?: number;
  range: LspRange;
  position: LspPosition;
}

export function editCommandArgs(uri: string, version: number | undefined, range: LspRange): EditCommandArgs {
  const args: EditCommandArgs = { uri, range, position: range.start };
  if (version !== undefined) {
    args.version = version;
  }
  return args;
}

/** A message when a fill / rewrite command changed nothing (`{ applied: false, reason }`), else undefined. */
export function commandOutcome(result: unknown): string | undefined {
  if (!result || typeof result !== 'object') {
    return undefined;
  }
  const r = result as { applied?: unknown; reason?: unknown };
  if (r.applied === false) {
    return typeof r.reason === 'string' && r.reason !== '' ? `nothing changed (${r.reason})` : 'nothing changed';
  }
  return undefined;
}

/** Model description from the server's status answer (`Ready("qwen2 (…)")` → `qwen2 (…)`). */
export function describeModel(status: StatusResult | undefined | null): string | undefined {
  if (!status || typeof status.model !== 'string' || status.model === '') {
    return undefined;
  }
  const m = /^\w+\("?(.*?)"?\)$/s.exec(status.model);
  return m ? m[1] : status.model;
}

/** Picks the server's id for a command: the configured one if advertised, else one advertised that ends the same way. */
export function resolveServerCommand(wanted: string, advertised: readonly string[] | undefined): string | undefined {
  if (!advertised || advertised.length === 0) {
    return undefined;
  }
  if (advertised.includes(wanted)) {
    return wanted;
  }
  const tail = wanted.slice(wanted.lastIndexOf('.') + 1).toLowerCase();
  return advertised.find((c) => c.toLowerCase().replace(/[-_]/g, '').endsWith(tail.toLowerCase()));
}

// ---- status bar -----------------------------------------------------------------------------

export type ServerState = 'starting' | 'loading' | 'ready' | 'busy' | 'stopped' | 'error';

export interface StatusView {
  state: ServerState;
  /** Model description from the server, if it told us. */
  model?: string;
  /** Latency of the last completion request, in milliseconds. */
  lastLatencyMs?: number;
  /** Number of items the last request returned. */
  lastItems?: number;
  detail?: string;
}

const ICONS: Record<ServerState, string> = {
  starting: '$(loading~spin)',
  loading: '$(loading~spin)',
  ready: '$(sparkle)',
  busy: '$(sync~spin)',
  stopped: '$(circle-slash)',
  error: '$(error)',
};

export function formatLatency(ms: number): string {
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

/** Text of the status-bar item, e.g. `$(sparkle) diffusion 231 ms`. */
export function statusText(view: StatusView): string {
  const parts = [ICONS[view.state], 'diffusion'];
  if (view.state === 'ready' || view.state === 'busy') {
    if (view.lastLatencyMs !== undefined) {
      parts.push(formatLatency(view.lastLatencyMs));
    }
  } else {
    parts.push(view.state);
  }
  return parts.join(' ');
}

/** Tooltip of the status-bar item. */
export function statusTooltip(view: StatusView): string {
  const lines = [`Diffusion LS: ${view.state}`];
  if (view.model) {
    lines.push(`Model: ${view.model}`);
  }
  if (view.lastLatencyMs !== undefined) {
    const items = view.lastItems !== undefined ? ` (${view.lastItems} item${view.lastItems === 1 ? '' : 's'})` : '';
    lines.push(`Last completion: ${formatLatency(view.lastLatencyMs)}${items}`);
  }
  if (view.detail) {
    lines.push(view.detail);
  }
  return lines.join('\n');
}

/**
 * Measures completion latency around the provider. Requests overlap (VS Code cancels and asks
 * again as you type), so each start returns its own stop; only requests that finished without
 * being cancelled count.
 */
export class LatencyTracker {
  private inFlight = 0;
  last?: number;
  lastItems?: number;
  constructor(private readonly now: () => number = () => performance.now()) {}

  get busy(): boolean {
    return this.inFlight > 0;
  }

  start(): (items: number | undefined, cancelled: boolean) => number | undefined {
    const t0 = this.now();
    this.inFlight++;
    let done = false;
    return (items, cancelled) => {
      if (done) {
        return undefined;
      }
      done = true;
      this.inFlight--;
      if (cancelled) {
        return undefined;
      }
      this.last = this.now() - t0;
      this.lastItems = items;
      return this.last;
    };
  }
}

/** Number of items in an inline completion result (array or list). */
export function countItems(result: unknown): number | undefined {
  if (result === null || result === undefined) {
    return 0;
  }
  if (Array.isArray(result)) {
    return result.length;
  }
  const items = (result as { items?: unknown }).items;
  return Array.isArray(items) ? items.length : undefined;
}
