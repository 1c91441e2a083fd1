// Unit tests of the pure parts of the extension (no VS Code needed): `npm test`.

import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import {
  commandOutcome,
  countItems,
  describeModel,
  SERVER_COMMANDS,
  didChangeConfigurationParams,
  editCommandArgs,
  expandPath,
  formatLatency,
  LatencyTracker,
  resolveServerCommand,
  SERVER_OPTION_KEYS,
  serverCommand,
  statusText,
  statusTooltip,
  toServerOptions,
} from '../src/config';

const reader = (values: Record<string, unknown>) => (key: string) => values[key];

test('every server option key has a diffusionLs.<key> setting in package.json', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
  const props = pkg.contributes.configuration.properties;
  for (const key of SERVER_OPTION_KEYS) {
    assert.ok(props[`diffusionLs.${key}`], `missing setting diffusionLs.${key}`);
    // Unset by default so the server keeps its own defaults.
    assert.equal(props[`diffusionLs.${key}`].default, null, `diffusionLs.${key} default`);
  }
  assert.equal(props['diffusionLs.serverPath'].default, 'diffusion-ls');
  assert.deepEqual(
    [...SERVER_OPTION_KEYS].sort(),
    ['candidates', 'contextTokens', 'debounceMs', 'maxSpanTokens', 'model', 'steps', 'temperature', 'verify'],
  );
});

test('package.json contributes the two commands and is packageable', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
  const titles = pkg.contributes.commands.map((c: { category: string; title: string }) => `${c.category}: ${c.title}`);
  assert.ok(titles.includes('Diffusion: Fill selection'));
  assert.ok(titles.includes('Diffusion: Rewrite function'));
  assert.ok(pkg.repository && pkg.license && pkg.publisher, 'vsce needs repository, license and publisher');
  assert.match(pkg.dependencies['vscode-languageclient'], /^\^?(1\d)\./);
});

test('unset settings are left out so server defaults apply', () => {
  const { options, problems } = toServerOptions(reader({ model: null, steps: undefined, verify: null, temperature: '' }));
  assert.deepEqual(options, {});
  assert.deepEqual(problems, []);
});

test('all settings map to initializationOptions', () => {
  const { options, problems } = toServerOptions(
    reader({
      model: '/models/dream',
      steps: 4,
      maxSpanTokens: 48,
      candidates: 3,
      temperature: 0,
      contextTokens: 1024,
      verify: false,
      debounceMs: 0,
      serverPath: '/ignored',
    }),
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(options, {
    model: '/models/dream',
    steps: 4,
    maxSpanTokens: 48,
    candidates: 3,
    temperature: 0,
    contextTokens: 1024,
    verify: false,
    debounceMs: 0,
  });
});

test('bad values are dropped and reported', () => {
  const { options, problems } = toServerOptions(
    reader({ steps: 0, candidates: 1.5, temperature: -1, verify: 'yes', debounceMs: -5, model: 42, maxSpanTokens: 8 }),
  );
  assert.deepEqual(options, { maxSpanTokens: 8 });
  assert.equal(problems.length, 6);
  assert.ok(problems.some((p) => p.startsWith('diffusionLs.steps:')));
});

test('model paths expand ~, ${workspaceFolder} and relative paths', () => {
  const home = os.homedir();
  assert.equal(expandPath('~/m', undefined, '/h'), '/h/m');
  assert.equal(expandPath('${userHome}/m', undefined, '/h'), '/h/m');
  assert.equal(expandPath('${workspaceFolder}/models/x', '/ws'), '/ws/models/x');
  assert.equal(expandPath('models/x', '/ws'), '/ws/models/x');
  assert.equal(expandPath('/abs/x', '/ws'), '/abs/x');
  const { options } = toServerOptions(reader({ model: '~/dream' }), '/ws');
  assert.equal(options.model, path.join(home, 'dream'));
});

test('didChangeConfiguration carries the same options under settings', () => {
  const opts = toServerOptions(reader({ steps: 2, verify: true })).options;
  assert.deepEqual(didChangeConfigurationParams(opts), { settings: { steps: 2, verify: true } });
});

test('server command: PATH lookup by default, paths expanded', () => {
  assert.equal(serverCommand(undefined), 'diffusion-ls');
  assert.equal(serverCommand('  '), 'diffusion-ls');
  assert.equal(serverCommand('diffusion-ls'), 'diffusion-ls');
  assert.equal(serverCommand('./target/release/diffusion-ls', '/ws'), '/ws/target/release/diffusion-ls');
  assert.equal(serverCommand('/opt/bin/diffusion-ls', '/ws'), '/opt/bin/diffusion-ls');
});

test('edit command arguments carry document, range and position', () => {
  const range = { start: { line: 3, character: 4 }, end: { line: 5, character: 0 } };
  assert.deepEqual(editCommandArgs('file:///a.rs', 7, range), {
    uri: 'file:///a.rs',
    version: 7,
    range,
    position: { line: 3, character: 4 },
  });
  assert.equal('version' in editCommandArgs('file:///a.rs', undefined, range), false);
});

test('server command ids are matched against what the server advertises', () => {
  assert.equal(resolveServerCommand(SERVER_COMMANDS.fillSelection, ['diffusion-ls.acceptCompletion', 'diffusion-ls.fillSelection']), 'diffusion-ls.fillSelection');
  assert.equal(resolveServerCommand(SERVER_COMMANDS.rewriteFunction, ['diffusion-ls.rewriteFunction']), 'diffusion-ls.rewriteFunction');
  assert.equal(resolveServerCommand('diffusion.fillSelection', ['diffusion-ls.fill_selection', 'x']), 'diffusion-ls.fill_selection');
  assert.equal(resolveServerCommand('diffusion.fillSelection', ['other']), undefined);
  assert.equal(resolveServerCommand('diffusion.fillSelection', undefined), undefined);
});

test('status text shows state, then latency once ready', () => {
  assert.equal(statusText({ state: 'starting' }), '$(loading~spin) diffusion starting');
  assert.equal(statusText({ state: 'ready' }), '$(sparkle) diffusion');
  assert.equal(statusText({ state: 'ready', lastLatencyMs: 231.4 }), '$(sparkle) diffusion 231 ms');
  assert.equal(statusText({ state: 'stopped', lastLatencyMs: 5 }), '$(circle-slash) diffusion stopped');
  assert.equal(formatLatency(1234), '1.23 s');
  assert.equal(formatLatency(12345), '12.3 s');
  const tip = statusTooltip({ state: 'ready', model: 'default (7.1M params)', lastLatencyMs: 80, lastItems: 2 });
  assert.match(tip, /Model: default \(7\.1M params\)/);
  assert.match(tip, /Last completion: 80 ms \(2 items\)/);
});

test('latency tracker counts only completed, uncancelled requests', () => {
  let now = 0;
  const t = new LatencyTracker(() => now);
  const a = t.start();
  now = 10;
  const b = t.start();
  assert.equal(t.busy, true);
  now = 50;
  assert.equal(a(0, true), undefined); // cancelled: VS Code asked again
  assert.equal(t.last, undefined);
  now = 90;
  assert.equal(b(3, false), 80);
  assert.equal(b(3, false), undefined); // stopping twice counts once
  assert.equal(t.busy, false);
  assert.equal(t.last, 80);
  assert.equal(t.lastItems, 3);
});

test('countItems handles arrays, lists and empty results', () => {
  assert.equal(countItems(null), 0);
  assert.equal(countItems([1, 2]), 2);
  assert.equal(countItems({ items: [1] }), 1);
  assert.equal(countItems({}), undefined);
});

test('model description from the status request', () => {
  assert.equal(describeModel({ ready: true, model: 'Ready("qwen2 (0.1M params, vocab 512)")' }), 'qwen2 (0.1M params, vocab 512)');
  assert.equal(describeModel({ ready: true, model: 'plain text' }), 'plain text');
  assert.equal(describeModel({ ready: false }), undefined);
  assert.equal(describeModel(null), undefined);
});

test('the server command ids match server/src/lsp.rs when it is there', () => {
  const lsp = path.join(__dirname, '..', '..', '..', '..', 'server', 'src', 'lsp.rs');
  if (!fs.existsSync(lsp)) {
    return;
  }
  const src = fs.readFileSync(lsp, 'utf8');
  for (const id of Object.values(SERVER_COMMANDS)) {
    assert.ok(src.includes(`"${id}"`), `${id} not in server/src/lsp.rs`);
  }
  assert.ok(src.includes('"diffusionLs/status"'));
});

test('command outcome: silent when applied, says why when not', () => {
  assert.equal(commandOutcome({ applied: true }), undefined);
  assert.equal(commandOutcome(null), undefined);
  assert.equal(commandOutcome({ applied: false, reason: 'the document changed' }), 'nothing changed (the document changed)');
  assert.equal(commandOutcome({ applied: false }), 'nothing changed');
});
