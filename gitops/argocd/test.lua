-- Runs health.lua against every fixture and compares with fixtures/expected.json.
-- Usage (from any directory): lua5.1 gitops/argocd/test.lua [FIXTURES_DIR]
-- FIXTURES_DIR defaults to gitops/argocd/fixtures; it holds *.json objects and
-- an expected.json mapping each file to {status, message (a substring)}.
-- Exits 1 on any mismatch, on a fixture without an expectation and on an
-- expectation without a fixture. JSON null becomes nil, as in Argo CD.

local here = (arg and arg[0] or "test.lua"):match("^(.*)/[^/]*$") or "."
local fixtures_dir = (arg and arg[1]) or (here .. "/fixtures")

---------------------------------------------------------------------------
-- A small JSON decoder (RFC 8259; \u escapes to UTF-8, surrogate pairs).
---------------------------------------------------------------------------
local json = {}

local function decode_error(str, pos, msg)
  error(string.format("JSON error at byte %d: %s near %q", pos, msg, str:sub(pos, pos + 20)), 0)
end

local function skip_ws(str, pos)
  local _, e = str:find("^[ \t\r\n]*", pos)
  return e + 1
end

local function utf8_char(cp)
  if cp < 0x80 then
    return string.char(cp)
  elseif cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
  elseif cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return string.char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
    0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local decode_value

local function decode_string(str, pos)
  -- pos is at the opening quote
  local out, i = {}, pos + 1
  while true do
    local c = str:sub(i, i)
    if c == "" then
      decode_error(str, pos, "unterminated string")
    elseif c == '"' then
      return table.concat(out), i + 1
    elseif c == "\\" then
      local e = str:sub(i + 1, i + 1)
      if escapes[e] then
        out[#out + 1] = escapes[e]
        i = i + 2
      elseif e == "u" then
        local hex = str:sub(i + 2, i + 5)
        if not hex:match("^%x%x%x%x$") then
          decode_error(str, i, "bad \\u escape")
        end
        local cp = tonumber(hex, 16)
        i = i + 6
        if cp >= 0xD800 and cp <= 0xDBFF and str:sub(i, i + 1) == "\\u" then
          local lo = tonumber(str:sub(i + 2, i + 5), 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            i = i + 6
          end
        end
        out[#out + 1] = utf8_char(cp)
      else
        decode_error(str, i, "bad escape")
      end
    elseif c:byte() < 0x20 then
      decode_error(str, i, "control character in string")
    else
      local s, e = str:find('^[^"\\%c]+', i)
      out[#out + 1] = str:sub(s, e)
      i = e + 1
    end
  end
end

local function decode_number(str, pos)
  local s, e = str:find("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
  if not s then
    decode_error(str, pos, "bad number")
  end
  local n = tonumber(str:sub(s, e))
  if n == nil then
    decode_error(str, pos, "bad number")
  end
  return n, e + 1
end

local function decode_array(str, pos)
  local out, n = {}, 0
  pos = skip_ws(str, pos + 1)
  if str:sub(pos, pos) == "]" then
    return out, pos + 1
  end
  while true do
    local v
    v, pos = decode_value(str, pos)
    n = n + 1
    out[n] = v
    pos = skip_ws(str, pos)
    local c = str:sub(pos, pos)
    if c == "]" then
      return out, pos + 1
    elseif c ~= "," then
      decode_error(str, pos, "expected , or ]")
    end
    pos = skip_ws(str, pos + 1)
  end
end

local function decode_object(str, pos)
  local out = {}
  pos = skip_ws(str, pos + 1)
  if str:sub(pos, pos) == "}" then
    return out, pos + 1
  end
  while true do
    if str:sub(pos, pos) ~= '"' then
      decode_error(str, pos, "expected a key")
    end
    local k
    k, pos = decode_string(str, pos)
    pos = skip_ws(str, pos)
    if str:sub(pos, pos) ~= ":" then
      decode_error(str, pos, "expected :")
    end
    local v
    v, pos = decode_value(str, skip_ws(str, pos + 1))
    out[k] = v
    pos = skip_ws(str, pos)
    local c = str:sub(pos, pos)
    if c == "}" then
      return out, pos + 1
    elseif c ~= "," then
      decode_error(str, pos, "expected , or }")
    end
    pos = skip_ws(str, pos + 1)
  end
end

decode_value = function(str, pos)
  pos = skip_ws(str, pos)
  local c = str:sub(pos, pos)
  if c == "{" then
    return decode_object(str, pos)
  elseif c == "[" then
    return decode_array(str, pos)
  elseif c == '"' then
    return decode_string(str, pos)
  elseif c == "-" or c:match("%d") then
    return decode_number(str, pos)
  elseif str:sub(pos, pos + 3) == "true" then
    return true, pos + 4
  elseif str:sub(pos, pos + 4) == "false" then
    return false, pos + 5
  elseif str:sub(pos, pos + 3) == "null" then
    return nil, pos + 4
  end
  decode_error(str, pos, "unexpected character")
end

function json.decode(str)
  local v, pos = decode_value(str, 1)
  pos = skip_ws(str, pos)
  if pos <= #str then
    decode_error(str, pos, "trailing data")
  end
  return v
end

-- Self-test of the decoder, so a decoder bug cannot hide a health bug.
do
  local t = json.decode('{"a":[1,2.5,-3e2,true,false,null,"x\\"\\u00e9\\ud83d\\ude00"],"b":{},"c":[]}')
  assert(t.a[1] == 1 and t.a[2] == 2.5 and t.a[3] == -300 and t.a[4] == true and t.a[5] == false)
  assert(t.a[6] == nil and t.a[7] == 'x"\195\169\240\159\152\128', "string escapes")
  assert(next(t.b) == nil and next(t.c) == nil)
  assert(not pcall(json.decode, '{"a":1,}'), "trailing comma must fail")
  assert(not pcall(json.decode, '{"a":1} x'), "trailing data must fail")
end

---------------------------------------------------------------------------
-- Runner
---------------------------------------------------------------------------
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local health_chunk = assert(loadfile(here .. "/health.lua"))

local function health(object)
  -- A fresh environment per call, with `obj` as Argo CD provides it.
  local env = setmetatable({ obj = object }, { __index = _G })
  setfenv(health_chunk, env)
  return health_chunk()
end

local expected = json.decode(read(fixtures_dir .. "/expected.json"))

local fixtures = {}
local ls = assert(io.popen('ls "' .. fixtures_dir .. '"'))
for name in ls:lines() do
  if name:match("%.json$") and name ~= "expected.json" then
    fixtures[#fixtures + 1] = name
  end
end
ls:close()
table.sort(fixtures)

local passed, failed = 0, 0
local seen = {}
for _, name in ipairs(fixtures) do
  seen[name] = true
  local want = expected[name]
  local ok, result = pcall(function()
    return health(json.decode(read(fixtures_dir .. "/" .. name)))
  end)
  local problem
  if want == nil then
    problem = "no expectation in fixtures/expected.json"
  elseif not ok then
    problem = "health.lua failed: " .. tostring(result)
  elseif type(result) ~= "table" then
    problem = "health.lua returned " .. type(result)
  elseif result.status ~= want.status then
    problem = string.format("status %s, want %s (message %q)", tostring(result.status), want.status, tostring(result.message))
  elseif want.message ~= nil and (result.message == nil or not result.message:find(want.message, 1, true)) then
    problem = string.format("message %q lacks %q", tostring(result.message), want.message)
  end
  if problem then
    failed = failed + 1
    print("FAIL " .. name .. ": " .. problem)
  else
    passed = passed + 1
    print(string.format("ok   %-40s %-11s %s", name, result.status, result.message or ""))
  end
end
for name in pairs(expected) do
  if not seen[name] then
    failed = failed + 1
    print("FAIL " .. name .. ": expected in fixtures/expected.json but no such fixture")
  end
end

print(string.format("argocd-health: %d passed, %d failed", passed, failed))
if failed > 0 or passed == 0 then
  os.exit(1)
end
