// VS Code client of diffusion-ls: starts the server, forwards settings, adds the Fill / Rewrite
// commands and a status-bar item. Ghost text itself is VS Code's own inline-completion UI, fed by
// vscode-languageclient from the server's `textDocument/inlineCompletion`.

import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  NotificationType,
  ServerOptions as LspServerOptions,
  State,
} from 'vscode-languageclient/node';
import {
  commandOutcome,
  countItems,
  describeModel,
  didChangeConfigurationParams,
  editCommandArgs,
  LatencyTracker,
  resolveServerCommand,
  RESTART_SETTINGS,
  SECTION,
  SERVER_COMMANDS,
  serverCommand,
  ServerState,
  statusText,
  statusTooltip,
  STATUS_REQUEST,
  StatusResult,
  StatusView,
  toServerOptions,
} from './config';

/**
 * Optional notification a server may send about itself; every field is optional. (diffusion-ls
 * has none yet: the state comes from the client's state and the `diffusionLs/status` request.)
 */
interface StatusNotificationParams {
  state?: ServerState;
  model?: string;
  latencyMs?: number;
  message?: string;
}
const StatusNotification = new NotificationType<StatusNotificationParams>('diffusion/status');

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel | undefined;
let statusItem: vscode.StatusBarItem | undefined;
const view: StatusView = { state: 'stopped' };
const latency = new LatencyTracker();

function workspaceFolder(): string | undefined {
  return vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
}

function settings(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function currentServerOptions() {
  const { options, problems } = toServerOptions((k) => settings().get(k), workspaceFolder());
  if (problems.length > 0) {
    void vscode.window.showWarningMessage(`Diffusion LS ignored settings: ${problems.join('; ')}`);
  }
  return options;
}

function renderStatus(): void {
  if (!statusItem) {
    return;
  }
  view.state = view.state === 'ready' && latency.busy ? 'busy' : view.state === 'busy' && !latency.busy ? 'ready' : view.state;
  view.lastLatencyMs = latency.last ?? view.lastLatencyMs;
  view.lastItems = latency.lastItems ?? view.lastItems;
  statusItem.text = statusText(view);
  statusItem.tooltip = statusTooltip(view);
  statusItem.backgroundColor =
    view.state === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  statusItem.show();
}

function languages(): string[] {
  const langs = settings().get<string[]>('languages');
  return Array.isArray(langs) && langs.length > 0 ? langs : ['rust'];
}

function createClient(): LanguageClient {
  const command = serverCommand(settings().get('serverPath'), workspaceFolder());
  const args = settings().get<string[]>('serverArgs') ?? [];
  const serverOptions: LspServerOptions = {
    run: { command, args },
    debug: { command, args, options: { env: { ...process.env, DIFFUSION_LS_LOG: 'debug' } } },
  };
  const langs = languages();
  void vscode.commands.executeCommand('setContext', 'diffusionLs.languages', langs);
  const clientOptions: LanguageClientOptions = {
    documentSelector: langs.flatMap((language) => [
      { scheme: 'file', language },
      { scheme: 'untitled', language },
    ]),
    initializationOptions: currentServerOptions(),
    outputChannel: output,
    middleware: {
      async provideInlineCompletionItems(document, position, context, token, next) {
        const stop = latency.start();
        renderStatus();
        try {
          const result = await next(document, position, context, token);
          stop(countItems(result), token.isCancellationRequested);
          return result;
        } catch (e) {
          stop(undefined, true);
          throw e;
        } finally {
          renderStatus();
        }
      },
    },
  };
  const c = new LanguageClient('diffusionLs', 'Diffusion LS', serverOptions, clientOptions);
  c.onDidChangeState((e) => {
    if (e.newState === State.Starting) {
      view.state = 'starting';
    } else if (e.newState === State.Running) {
      view.state = 'ready';
    } else {
      view.state = view.state === 'error' ? 'error' : 'stopped';
    }
    renderStatus();
  });
  return c;
}

async function startClient(): Promise<void> {
  client = createClient();
  view.state = 'starting';
  view.detail = undefined;
  renderStatus();
  try {
    await client.start();
  } catch (e) {
    view.state = 'error';
    view.detail = String(e);
    renderStatus();
    void vscode.window.showErrorMessage(
      `Diffusion LS failed to start (${String(e)}). Set diffusionLs.serverPath or install it with \`cargo install --path server\`.`,
    );
    return;
  }
  const info = client.initializeResult?.serverInfo;
  if (info) {
    view.detail = `${info.name}${info.version ? ' ' + info.version : ''}`;
  }
  void queryModelStatus(client);
  client.onNotification(StatusNotification, (p) => {
    if (p.state) {
      view.state = p.state;
    }
    if (p.model) {
      view.model = p.model;
    }
    if (p.latencyMs !== undefined) {
      view.lastLatencyMs = p.latencyMs;
    }
    view.detail = p.message;
    renderStatus();
  });
}

/** Shows "loading" until the server's status request (which waits for the model) answers. */
async function queryModelStatus(c: LanguageClient): Promise<void> {
  view.state = 'loading';
  renderStatus();
  try {
    const status = await c.sendRequest<StatusResult>(STATUS_REQUEST);
    if (client !== c) {
      return;
    }
    view.model = describeModel(status) ?? view.model;
    view.state = status?.ready ? 'ready' : 'error';
    if (!status?.ready) {
      view.detail = `The model did not load: ${status?.model ?? 'unknown reason'}`;
    }
  } catch (e) {
    // A server without the request: assume it is ready once running.
    if (client === c && c.isRunning()) {
      view.state = 'ready';
    }
  }
  renderStatus();
}

async function stopClient(): Promise<void> {
  const c = client;
  client = undefined;
  if (c) {
    try {
      await c.stop();
    } catch (e) {
      output?.warn(`stopping the server: ${String(e)}`);
    }
  }
}

/** Runs a server command on the active editor's selection. */
async function runEditCommand(which: 'fillSelection' | 'rewriteFunction'): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    void vscode.window.showInformationMessage('Diffusion: no active editor.');
    return;
  }
  if (!client || !client.isRunning()) {
    void vscode.window.showWarningMessage('Diffusion LS is not running.');
    return;
  }
  if (which === 'fillSelection' && editor.selection.isEmpty) {
    void vscode.window.showInformationMessage('Diffusion: select the text to fill first.');
    return;
  }
  const advertised = client.initializeResult?.capabilities.executeCommandProvider?.commands;
  const command = resolveServerCommand(SERVER_COMMANDS[which], advertised);
  if (!command) {
    void vscode.window.showWarningMessage(`Diffusion LS does not offer ${SERVER_COMMANDS[which]}.`);
    return;
  }
  const doc = editor.document;
  const sel = editor.selection;
  const args = editCommandArgs(doc.uri.toString(), doc.version, {
    start: { line: sel.start.line, character: sel.start.character },
    end: { line: sel.end.line, character: sel.end.character },
  });
  const title = which === 'fillSelection' ? 'Diffusion: filling selection' : 'Diffusion: rewriting function';
  await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Window, title, cancellable: false },
    async () => {
      const t0 = performance.now();
      try {
        // The server answers after it has applied the edit through workspace/applyEdit:
        // `{ applied: true }`, or `{ applied: false, reason }`.
        const result = await client!.sendRequest(ExecuteCommandRequest.type, { command, arguments: [args] });
        view.lastLatencyMs = performance.now() - t0;
        renderStatus();
        const outcome = commandOutcome(result);
        if (outcome) {
          void vscode.window.showInformationMessage(`${title}: ${outcome}`);
        }
      } catch (e) {
        void vscode.window.showErrorMessage(`${title} failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    },
  );
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel('Diffusion LS', { log: true });
  statusItem = vscode.window.createStatusBarItem('diffusionLs.status', vscode.StatusBarAlignment.Right, 100);
  statusItem.name = 'Diffusion LS';
  statusItem.command = 'diffusionLs.showOutput';
  context.subscriptions.push(output, statusItem);

  context.subscriptions.push(
    vscode.commands.registerCommand('diffusionLs.fillSelection', () => runEditCommand('fillSelection')),
    vscode.commands.registerCommand('diffusionLs.rewriteFunction', () => runEditCommand('rewriteFunction')),
    vscode.commands.registerCommand('diffusionLs.restartServer', async () => {
      await stopClient();
      await startClient();
    }),
    vscode.commands.registerCommand('diffusionLs.showOutput', () => output?.show(true)),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) {
        return;
      }
      if (RESTART_SETTINGS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`))) {
        await stopClient();
        await startClient();
        return;
      }
      if (client?.isRunning()) {
        await client.sendNotification(
          DidChangeConfigurationNotification.type,
          didChangeConfigurationParams(currentServerOptions()),
        );
        if (e.affectsConfiguration(`${SECTION}.model`)) {
          void queryModelStatus(client);
        }
      }
    }),
  );
  await startClient();
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
