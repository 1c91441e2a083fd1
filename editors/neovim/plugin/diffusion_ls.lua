-- Commands of the diffusion_ls plugin. The server starts from require('diffusion_ls').setup(),
-- or here when `vim.g.diffusion_ls` holds the setup options (for packadd users).
if vim.g.loaded_diffusion_ls then
  return
end
vim.g.loaded_diffusion_ls = true

vim.api.nvim_create_user_command('DiffusionFill', function(cmd)
  require('diffusion_ls').fill_command(cmd)
end, { range = true, desc = 'Diffusion: fill the selected text (or lines) with the model' })

vim.api.nvim_create_user_command('DiffusionRewrite', function()
  require('diffusion_ls').rewrite_command()
end, { desc = 'Diffusion: rewrite the function around the cursor' })

vim.api.nvim_create_user_command('DiffusionSet', function(cmd)
  local m = require('diffusion_ls')
  m.set(m.parse_settings(cmd.fargs))
end, {
  nargs = '+',
  desc = 'Diffusion: change server options, e.g. :DiffusionSet steps=4 temperature=0',
  complete = function()
    return vim.tbl_map(function(k)
      return k .. '='
    end, require('diffusion_ls').option_keys)
  end,
})

vim.api.nvim_create_user_command('DiffusionStatus', function()
  print(require('diffusion_ls').status())
end, { desc = 'Diffusion: server state and last completion latency' })

if type(vim.g.diffusion_ls) == 'table' then
  require('diffusion_ls').setup(vim.g.diffusion_ls)
end
