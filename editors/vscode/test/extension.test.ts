// The extension's wiring, with `vscode` and `vscode-languageclient/node` replaced by recording
// fakes (no VS Code here): settings reach initializationOptions and didChangeConfiguration, the
// commands send the server's command ids with the right arguments, the status bar follows the
// model state and the latency measured around inline completion.

import { test, beforeEach } from 'node:test';
import * as assert from 'node:assert/strict';
import Module = require('node:module');

type Rec = { method: string; params: unknown };

const state = {
  settings: {} as Record<string, unknown>,
  configListeners: [] as ((e: { affectsConfiguration(s: string): boolean }) => unknown)[],
  commands: new Map<string, (...a: unknown[]) => unknown>(),
  messages: [] as string[],
  clients: [] as FakeClient[],
  statusItem: undefined as undefined | { text: string; tooltip: string },
  activeTextEditor: undefined as unknown,
  statusAnswer: { ready: true, model: 'Ready("tiny (0.1M params)")' } as unknown,
};

class FakeClient {
  requests: Rec[] = [];
  notifications: Rec[] = [];
  running = false;
  stopped = false;
  stateListeners: ((e: { oldState: number; newState: number }) => void)[] = [];
  initializeResult = {
    capabilities: {
      executeCommandProvider: {
        commands: ['diffusion-ls.acceptCompletion', 'diffusion-ls.fillSelection', 'diffusion-ls.rewriteFunction'],
      },
    },
    serverInfo: { name: 'diffusion-ls', version: '0.1.0' },
  };
  constructor(
    public id: string,
    public name: string,
    public serverOptions: { run: { command: string; args: string[] } },
    public clientOptions: {
      initializationOptions: unknown;
      documentSelector: { language: string; scheme: string }[];
      middleware: {
        provideInlineCompletionItems: (...a: unknown[]) => Promise<unknown>;
      };
    },
  ) {
    state.clients.push(this);
  }
  onDidChangeState(cb: (e: { oldState: number; newState: number }) => void) {
    this.stateListeners.push(cb);
    return { dispose() {} };
  }
  async start() {
    this.stateListeners.forEach((cb) => cb({ oldState: 1, newState: 3 }));
    this.stateListeners.forEach((cb) => cb({ oldState: 3, newState: 2 }));
    this.running = true;
  }
  async stop() {
    this.running = false;
    this.stopped = true;
  }
  isRunning() {
    return this.running;
  }
  async sendRequest(type: string | { method: string }, params?: unknown) {
    const method = typeof type === 'string' ? type : type.method;
    this.requests.push({ method, params });
    if (method === 'diffusionLs/status') {
      return state.statusAnswer;
    }
    if (method === 'workspace/executeCommand') {
      return { applied: true };
    }
    return null;
  }
  async sendNotification(type: { method: string }, params: unknown) {
    this.notifications.push({ method: type.method, params });
  }
  onNotification() {
    return { dispose() {} };
  }
}

const fakeClientModule = {
  LanguageClient: FakeClient,
  State: { Stopped: 1, Running: 2, Starting: 3 },
  DidChangeConfigurationNotification: { type: { method: 'workspace/didChangeConfiguration' } },
  ExecuteCommandRequest: { type: { method: 'workspace/executeCommand' } },
  NotificationType: class {
    constructor(public method: string) {}
  },
};

const fakeVscode = {
  workspace: {
    workspaceFolders: [{ uri: { fsPath: '/ws' } }],
    getConfiguration: () => ({ get: (k: string) => state.settings[k] }),
    onDidChangeConfiguration: (cb: (typeof state.configListeners)[number]) => {
      state.configListeners.push(cb);
      return { dispose() {} };
    },
  },
  window: {
    createOutputChannel: () => ({ show() {}, warn() {}, info() {}, dispose() {} }),
    createStatusBarItem: () => {
      const item = { text: '', tooltip: '', show() {}, dispose() {} };
      state.statusItem = item;
      return item;
    },
    showWarningMessage: async (m: string) => void state.messages.push(`warn: ${m}`),
    showErrorMessage: async (m: string) => void state.messages.push(`error: ${m}`),
    showInformationMessage: async (m: string) => void state.messages.push(`info: ${m}`),
    withProgress: async (_o: unknown, fn: () => Promise<unknown>) => fn(),
    get activeTextEditor() {
      return state.activeTextEditor;
    },
  },
  commands: {
    registerCommand: (id: string, fn: (...a: unknown[]) => unknown) => {
      state.commands.set(id, fn);
      return { dispose() {} };
    },
    executeCommand: async () => undefined,
  },
  StatusBarAlignment: { Left: 1, Right: 2 },
  ProgressLocation: { Window: 10 },
  ThemeColor: class {
    constructor(public id: string) {}
  },
};

// Serve the fakes for `require('vscode')` and `require('vscode-languageclient/node')`.
const M = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
const realLoad = M._load;
M._load = function (request: string, ...rest: unknown[]) {
  if (request === 'vscode') {
    return fakeVscode;
  }
  if (request === 'vscode-languageclient/node') {
    return fakeClientModule;
  }
  return realLoad.call(this, request, ...rest);
};

// eslint-disable-next-line @typescript-eslint/no-require-imports
const ext = require('../src/extension') as typeof import('../src/extension');

const context = { subscriptions: [] as unknown[] };
const tick = () => new Promise((r) => setTimeout(r, 10));
const affects = (...keys: string[]) => ({
  affectsConfiguration: (s: string) => s === 'diffusionLs' || keys.some((k) => s === `diffusionLs.${k}`),
});
const current = () => state.clients[state.clients.length - 1];

beforeEach(async () => {
  await ext.deactivate();
  state.settings = {
    serverPath: '/opt/diffusion-ls',
    serverArgs: ['--model', '/m'],
    languages: ['rust'],
    model: null,
    steps: 4,
    maxSpanTokens: 32,
    verify: false,
    debounceMs: 0,
  };
  state.configListeners.length = 0;
  state.commands.clear();
  state.messages.length = 0;
  state.clients.length = 0;
  state.activeTextEditor = undefined;
  state.statusAnswer = { ready: true, model: 'Ready("tiny (0.1M params)")' };
  await ext.activate(context as never);
  await tick();
});

test('the server starts with the settings as initializationOptions', () => {
  const c = current();
  assert.equal(c.id, 'diffusionLs');
  assert.deepEqual(c.serverOptions.run, { command: '/opt/diffusion-ls', args: ['--model', '/m'] });
  assert.deepEqual(c.clientOptions.initializationOptions, { steps: 4, maxSpanTokens: 32, verify: false, debounceMs: 0 });
  assert.deepEqual(
    c.clientOptions.documentSelector.map((d) => `${d.scheme}:${d.language}`),
    ['file:rust', 'untitled:rust'],
  );
  for (const id of ['diffusionLs.fillSelection', 'diffusionLs.rewriteFunction', 'diffusionLs.restartServer']) {
    assert.ok(state.commands.has(id), id);
  }
});

test('the status bar shows the model once the status request answers', () => {
  assert.ok(current().requests.some((r) => r.method === 'diffusionLs/status'));
  assert.equal(state.statusItem!.text, '$(sparkle) diffusion');
  assert.match(state.statusItem!.tooltip, /Model: tiny \(0\.1M params\)/);
});

test('a model that fails to load shows as an error', async () => {
  state.statusAnswer = { ready: false, model: 'Failed("no such folder")' };
  await state.commands.get('diffusionLs.restartServer')!();
  await tick();
  assert.match(state.statusItem!.text, /diffusion error/);
  assert.match(state.statusItem!.tooltip, /did not load/);
});

test('inline completion latency is measured around the provider', async () => {
  const next = async () => {
    await new Promise((r) => setTimeout(r, 30));
    return { items: [{ insertText: 'x' }] };
  };
  const token = { isCancellationRequested: false };
  const result = await current().clientOptions.middleware.provideInlineCompletionItems({}, {}, {}, token, next);
  assert.deepEqual(result, { items: [{ insertText: 'x' }] });
  assert.match(state.statusItem!.text, /^\$\(sparkle\) diffusion \d+ ms$/);
  const ms = Number(/(\d+) ms/.exec(state.statusItem!.text)![1]);
  assert.ok(ms >= 25 && ms < 1000, `${ms}`);
  assert.match(state.statusItem!.tooltip, /Last completion: \d+ ms \(1 item\)/);
});

test('changed settings are sent with didChangeConfiguration', async () => {
  state.settings.steps = 2;
  state.settings.candidates = 3;
  await Promise.all(state.configListeners.map((cb) => cb(affects('steps', 'candidates'))));
  const sent = current().notifications.filter((n) => n.method === 'workspace/didChangeConfiguration');
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].params, {
    settings: { steps: 2, maxSpanTokens: 32, candidates: 3, verify: false, debounceMs: 0 },
  });
  assert.equal(state.clients.length, 1, 'no restart for model settings');
});

test('changing serverPath restarts the server', async () => {
  const first = current();
  state.settings.serverPath = '/other/diffusion-ls';
  await Promise.all(state.configListeners.map((cb) => cb(affects('serverPath'))));
  assert.ok(first.stopped);
  assert.equal(state.clients.length, 2);
  assert.equal(current().serverOptions.run.command, '/other/diffusion-ls');
});

function editor(sel: { start: [number, number]; end: [number, number] }) {
  const pos = ([line, character]: [number, number]) => ({ line, character });
  return {
    document: { uri: { toString: () => 'file:///ws/src/main.rs' }, version: 7 },
    selection: { start: pos(sel.start), end: pos(sel.end), isEmpty: sel.start.join() === sel.end.join() },
  };
}

test('Fill selection sends diffusion-ls.fillSelection with { uri, range }', async () => {
  state.activeTextEditor = editor({ start: [2, 4], end: [2, 30] });
  await state.commands.get('diffusionLs.fillSelection')!();
  const req = current().requests.find((r) => r.method === 'workspace/executeCommand');
  assert.deepEqual(req?.params, {
    command: 'diffusion-ls.fillSelection',
    arguments: [
      {
        uri: 'file:///ws/src/main.rs',
        version: 7,
        range: { start: { line: 2, character: 4 }, end: { line: 2, character: 30 } },
        position: { line: 2, character: 4 },
      },
    ],
  });
});

test('Fill selection needs a selection', async () => {
  state.activeTextEditor = editor({ start: [2, 4], end: [2, 4] });
  await state.commands.get('diffusionLs.fillSelection')!();
  assert.ok(!current().requests.some((r) => r.method === 'workspace/executeCommand'));
  assert.ok(state.messages.some((m) => m.includes('select')));
});

test('Rewrite function sends diffusion-ls.rewriteFunction with { uri, position }', async () => {
  state.activeTextEditor = editor({ start: [5, 8], end: [5, 8] });
  await state.commands.get('diffusionLs.rewriteFunction')!();
  const req = current().requests.find((r) => r.method === 'workspace/executeCommand');
  const params = req?.params as { command: string; arguments: { uri: string; position: unknown }[] };
  assert.equal(params.command, 'diffusion-ls.rewriteFunction');
  assert.equal(params.arguments[0].uri, 'file:///ws/src/main.rs');
  assert.deepEqual(params.arguments[0].position, { line: 5, character: 8 });
});
