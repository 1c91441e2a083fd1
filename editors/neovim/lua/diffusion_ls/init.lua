--- diffusion_ls: Neovim client of diffusion-ls (diffusion-model code completions).
---
--- Starts the server through `vim.lsp.config` / `vim.lsp.enable`, shows its completions as ghost
--- text with `vim.lsp.inline_completion` (Neovim 0.12), or in the completion menu with
--- `vim.lsp.completion` autotrigger (Neovim 0.11), and adds :DiffusionFill / :DiffusionRewrite.
local M = {}

local NAME = 'diffusion_ls'

--- Server options sent as `init_options` and `settings` (didChangeConfiguration). nil: server default.
local OPTION_KEYS = {
  'model',
  'steps',
  'maxSpanTokens',
  'candidates',
  'temperature',
  'contextTokens',
  'verify',
  'debounceMs',
}
M.option_keys = OPTION_KEYS

---@class diffusion_ls.Config
M.defaults = {
  --- Server command; a string is the binary, a list is binary + arguments.
  cmd = { 'diffusion-ls' },
  filetypes = { 'rust' },
  root_markers = { 'Cargo.toml', '.git' },
  --- Model and sampling options for the server (keys in OPTION_KEYS); nil keeps the server's default.
  settings = {},
  --- Ghost text on 0.12; the completion menu with autotrigger on 0.11 (or when false).
  inline = true,
  --- On 0.11 (or inline = false): vim.lsp.completion with autotrigger.
  completion = true,
  --- Insert-mode keys; false disables one. `accept` falls back to the key itself when no
  --- completion is shown.
  keys = {
    accept = '<Tab>',
    next = '<M-]>',
    prev = '<M-[>',
    dismiss = '<C-]>',
  },
  --- Server command ids (executeCommandProvider.commands); matched against what the server
  --- advertises, so a renamed command still resolves.
  commands = {
    fill = 'diffusion-ls.fillSelection',
    rewrite = 'diffusion-ls.rewriteFunction',
  },
  --- Called with (client, bufnr) after the plugin attached to a buffer.
  on_attach = nil,
}

M.config = vim.deepcopy(M.defaults)

--- Latency and state for statuslines: see M.status().
M.state = { status = 'stopped', last_latency_ms = nil, last_items = nil, in_flight = 0 }

local has_inline = function()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

--- Only the recognised, non-nil options, in the shape the server reads.
---@param settings table
---@return table
function M.server_options(settings)
  local out = {}
  for _, k in ipairs(OPTION_KEYS) do
    local v = settings[k]
    if v ~= nil and v ~= vim.NIL and v ~= '' then
      if k == 'model' then
        v = vim.fs.normalize(v)
      end
      out[k] = v
    end
  end
  return out
end

local function server_cmd(cmd)
  if type(cmd) == 'string' then
    return { cmd }
  end
  return cmd
end

function M.get_client(bufnr)
  return vim.lsp.get_clients({ name = NAME, bufnr = bufnr })[1]
end

--- The server's id for one of our commands (config.commands[which]) or nil.
local function resolve_command(client, which)
  local wanted = M.config.commands[which]
  local provider = client.server_capabilities.executeCommandProvider
  local advertised = type(provider) == 'table' and provider.commands or {}
  if vim.list_contains(advertised, wanted) then
    return wanted
  end
  local tail = wanted:match('[^.]+$'):lower()
  for _, c in ipairs(advertised) do
    if c:lower():gsub('[-_]', ''):sub(-#tail) == tail then
      return c
    end
  end
  return nil
end

--- Wraps client.request to time inline completion (and completion) requests for M.status().
local function instrument(client)
  local request = client.request
  client.request = function(self, method, params, handler, bufnr)
    if method ~= 'textDocument/inlineCompletion' and method ~= 'textDocument/completion' then
      return request(self, method, params, handler, bufnr)
    end
    local t0 = vim.uv.hrtime()
    M.state.in_flight = M.state.in_flight + 1
    local wrapped = function(err, result, ctx, cfg)
      M.state.in_flight = math.max(0, M.state.in_flight - 1)
      if not err then
        M.state.last_latency_ms = (vim.uv.hrtime() - t0) / 1e6
        local items = result and (result.items or result) or {}
        M.state.last_items = type(items) == 'table' and #items or nil
        M.state.last_result_items = type(items) == 'table' and items or nil
        vim.api.nvim_exec_autocmds('User', { pattern = 'DiffusionLsStatus', modeline = false })
      end
      if handler then
        return handler(err, result, ctx, cfg)
      end
    end
    local ok, id = request(self, method, params, handler and wrapped or nil, bufnr)
    if not ok then
      M.state.in_flight = math.max(0, M.state.in_flight - 1)
    end
    return ok, id
  end
end

--- Asks the server for the model state (`diffusionLs/status` answers once the model loaded).
function M.query_status(client)
  M.state.status = 'loading'
  client:request('diffusionLs/status', nil, function(err, result)
    if err then
      M.state.status = 'ready' -- a server without the request
    elseif result and result.ready then
      M.state.status = 'ready'
      M.state.model = result.model
    else
      M.state.status = 'error'
      M.state.model = result and result.model
    end
    vim.api.nvim_exec_autocmds('User', { pattern = 'DiffusionLsStatus', modeline = false })
  end)
end

--- Statusline text, e.g. "diffusion 231ms".
function M.status()
  local s = M.state
  if s.status ~= 'ready' then
    return 'diffusion ' .. s.status
  end
  if s.in_flight > 0 then
    return 'diffusion …'
  end
  if s.last_latency_ms then
    return ('diffusion %dms'):format(math.floor(s.last_latency_ms + 0.5))
  end
  return 'diffusion'
end

local function map_keys(bufnr)
  local keys = M.config.keys or {}
  local function map(lhs, rhs, desc, opts)
    if lhs then
      vim.keymap.set('i', lhs, rhs, vim.tbl_extend('force', { buffer = bufnr, desc = desc }, opts or {}))
    end
  end
  if has_inline() and M.config.inline then
    local ic = vim.lsp.inline_completion
    map(keys.accept, function()
      if not ic.get() then
        return keys.accept
      end
    end, 'Diffusion: accept inline completion', { expr = true, replace_keycodes = true })
    map(keys.next, function()
      ic.select({ count = 1 })
    end, 'Diffusion: next inline completion')
    map(keys.prev, function()
      ic.select({ count = -1 })
    end, 'Diffusion: previous inline completion')
    map(keys.dismiss, function()
      -- Turning it off and on again drops the ghost text and pending requests.
      ic.enable(false, { bufnr = bufnr })
      ic.enable(true, { bufnr = bufnr })
    end, 'Diffusion: dismiss inline completion')
  else
    -- Completion menu: accept / next / previous map to the pum keys.
    map(keys.accept, function()
      return vim.fn.pumvisible() == 1 and '<C-y>' or keys.accept
    end, 'Diffusion: accept completion', { expr = true, replace_keycodes = true })
    map(keys.next, function()
      return vim.fn.pumvisible() == 1 and '<C-n>' or ''
    end, 'Diffusion: next completion', { expr = true, replace_keycodes = true })
    map(keys.prev, function()
      return vim.fn.pumvisible() == 1 and '<C-p>' or ''
    end, 'Diffusion: previous completion', { expr = true, replace_keycodes = true })
  end
end

--- For the completion menu (vim.lsp.completion): the server's items replace the line from its
--- start (textEdit.newText = line prefix + completion), which vim.lsp.completion would cut at the
--- first blank. The menu shows and inserts the whole first line instead ...
local function convert_item(item)
  if not (item.detail and item.detail:find('diffusion', 1, true) and item.textEdit and item.textEdit.newText) then
    return {}
  end
  return { word = item.textEdit.newText:match('^[^\n]*') }
end

local function units(text, encoding)
  if encoding == 'utf-8' then
    return #text
  end
  local utf32, utf16 = vim.str_utfindex(text, 'utf-32'), vim.str_utfindex(text, 'utf-16')
  return encoding == 'utf-32' and utf32 or utf16
end

--- ... and once accepted, this completes the edit: the lines after the first, and the closing
--- characters the item replaced after the cursor (the server re-types them at its end).
---@param done? table the completed item (default v:completed_item)
function M._complete_done(bufnr, done)
  done = done or vim.v.completed_item
  local lsp_item = type(done) == 'table' and vim.tbl_get(done, 'user_data', 'nvim', 'lsp', 'completion_item')
  if not lsp_item or not lsp_item.textEdit or vim.tbl_isempty(convert_item(lsp_item)) then
    return
  end
  local client = vim.lsp.get_client_by_id(vim.tbl_get(done, 'user_data', 'nvim', 'lsp', 'client_id') or -1)
  local encoding = client and client.offset_encoding or 'utf-16'
  local edit = lsp_item.textEdit
  local range = edit.range or edit.replace
  local lines = vim.split(edit.newText, '\n', { plain = true })
  local row = vim.api.nvim_win_get_cursor(0)[1] - 1
  if range.start.line ~= row or range['end'].line ~= row then
    return
  end
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local start = vim.str_byteindex(line, encoding, range.start.character, false)
  local word = done.word or ''
  if line:sub(start + 1, start + #word) ~= word then
    return -- not the text the menu inserted
  end
  local after = start + #word
  -- Characters the item replaces after the original cursor: the server's filterText is the line
  -- up to the cursor, so the cursor was at units(filterText).
  local rest = 0
  if lsp_item.filterText then
    local cursor_units = range.start.character + units(lsp_item.filterText, encoding)
    rest = math.max(0, range['end'].character - cursor_units)
  end
  local tail = line:sub(after + 1)
  local rest_bytes = rest > 0 and vim.str_byteindex(tail, encoding, math.min(rest, units(tail, encoding)), false) or 0
  if #lines == 1 and rest_bytes == 0 then
    return
  end
  local removed = tail:sub(1, rest_bytes)
  vim.api.nvim_buf_set_text(bufnr, row, start, row, after + rest_bytes, lines)
  -- The cursor goes before the re-typed closing characters.
  local last = lines[#lines]
  local col = #last
  if removed ~= '' and last:sub(-#removed) == removed then
    col = col - #removed
  end
  vim.api.nvim_win_set_cursor(0, { row + #lines, (#lines == 1 and start or 0) + col })
end

local function on_attach(client, bufnr)
  if has_inline() and M.config.inline and client:supports_method('textDocument/inlineCompletion') then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  elseif M.config.completion and vim.lsp.completion and client:supports_method('textDocument/completion') then
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true, convert = convert_item })
    -- A single diffusion candidate must still open the menu, and nothing is inserted until accepted.
    local ok, opt = pcall(function()
      return vim.bo[bufnr].completeopt ~= '' and vim.bo[bufnr].completeopt or vim.o.completeopt
    end)
    if ok then
      local want = vim.split(opt, ',', { trimempty = true })
      for _, o in ipairs({ 'menuone', 'noinsert' }) do
        if not vim.list_contains(want, o) then
          table.insert(want, o)
        end
      end
      pcall(function()
        vim.bo[bufnr].completeopt = table.concat(want, ',')
      end)
    end
    vim.api.nvim_create_autocmd('CompleteDone', {
      buffer = bufnr,
      group = vim.api.nvim_create_augroup('diffusion_ls.complete_done.' .. bufnr, { clear = true }),
      callback = function()
        M._complete_done(bufnr)
      end,
    })
  end
  map_keys(bufnr)
  if M.config.on_attach then
    M.config.on_attach(client, bufnr)
  end
end

--- Sets the plugin up: `require('diffusion_ls').setup({ settings = { steps = 4 } })`.
---@param opts? diffusion_ls.Config
function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  -- Lists are replaced, not merged.
  for _, k in ipairs({ 'cmd', 'filetypes', 'root_markers' }) do
    if opts and opts[k] then
      M.config[k] = opts[k]
    end
  end
  if vim.fn.has('nvim-0.11') == 0 then
    vim.notify('diffusion_ls needs Neovim 0.11 or newer', vim.log.levels.ERROR)
    return
  end
  local options = M.server_options(M.config.settings or {})
  vim.lsp.config(NAME, {
    cmd = server_cmd(M.config.cmd),
    filetypes = M.config.filetypes,
    root_markers = M.config.root_markers,
    init_options = options,
    settings = options,
    on_init = function(client)
      instrument(client)
      M.query_status(client)
    end,
    on_exit = function()
      M.state.status = 'stopped'
    end,
    on_attach = on_attach,
  })
  M.state.status = 'starting'
  vim.lsp.enable(NAME)
end

--- Changes server options at run time and tells running servers (workspace/didChangeConfiguration).
---@param settings table
function M.set(settings)
  M.config.settings = vim.tbl_extend('force', M.config.settings or {}, settings)
  local options = M.server_options(M.config.settings)
  vim.lsp.config(NAME, { init_options = options, settings = options })
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    client.settings = options
    client:notify('workspace/didChangeConfiguration', { settings = options })
    if settings.model ~= nil then
      M.query_status(client)
    end
  end
end

--- Parses `key=value` words (from :DiffusionSet) into settings.
function M.parse_settings(words)
  local out = {}
  for _, w in ipairs(words) do
    local k, v = w:match('^([%w_]+)=(.*)$')
    if not k or not vim.list_contains(OPTION_KEYS, k) then
      error(('diffusion_ls: unknown setting %q (one of %s)'):format(w, table.concat(OPTION_KEYS, ', ')))
    end
    if v == 'true' or v == 'false' then
      out[k] = v == 'true'
    elseif tonumber(v) then
      out[k] = tonumber(v)
    else
      out[k] = v
    end
  end
  return out
end

--- Runs a server edit command (fill / rewrite) on a range of the current buffer.
--- The server applies the edit through workspace/applyEdit.
---@param which 'fill'|'rewrite'
---@param range? { start: [integer, integer], end_: [integer, integer] } (1,0)-indexed marks, end inclusive
---@param on_done? fun(err: any, result: any)
function M.run_command(which, range, on_done)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = M.get_client(bufnr)
  if not client then
    vim.notify('diffusion-ls is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  local command = resolve_command(client, which)
  if not command then
    vim.notify(('diffusion-ls does not offer %s'):format(M.config.commands[which]), vim.log.levels.WARN)
    return
  end
  local params
  if range then
    params = vim.lsp.util.make_given_range_params(range.start, range.end_, bufnr, client.offset_encoding)
  else
    local pos = vim.lsp.util.make_position_params(0, client.offset_encoding)
    params = { textDocument = pos.textDocument, range = { start = pos.position, ['end'] = pos.position } }
  end
  -- Fill reads { uri, range }, rewrite { uri, position }; both get both.
  local args = {
    uri = params.textDocument.uri,
    version = vim.lsp.util.buf_versions[bufnr],
    range = params.range,
    position = params.range.start,
  }
  local t0 = vim.uv.hrtime()
  client:exec_cmd({ title = which, command = command, arguments = { args } }, { bufnr = bufnr }, function(err, result)
    M.state.last_latency_ms = (vim.uv.hrtime() - t0) / 1e6
    if err then
      vim.notify(('diffusion-ls %s failed: %s'):format(which, err.message or vim.inspect(err)), vim.log.levels.ERROR)
    end
    if on_done then
      on_done(err, result)
    end
  end)
end

--- :DiffusionFill handler (range command; charwise in visual mode).
function M.fill_command(cmd)
  local start, end_
  local vstart, vend = vim.fn.getpos("'<"), vim.fn.getpos("'>")
  local visual = cmd.range == 2 and vstart[2] == cmd.line1 and vend[2] == cmd.line2 and vim.fn.visualmode() == 'v'
  if visual then
    start = { vstart[2], vstart[3] - 1 }
    end_ = { vend[2], vend[3] - 1 }
  else
    -- Whole lines.
    local last = vim.api.nvim_buf_get_lines(0, cmd.line2 - 1, cmd.line2, true)[1]
    start = { cmd.line1, 0 }
    end_ = { cmd.line2, math.max(#last - 1, 0) }
  end
  M.run_command('fill', { start = start, end_ = end_ })
end

--- :DiffusionRewrite handler: the function around the cursor.
function M.rewrite_command()
  M.run_command('rewrite', nil)
end

return M
