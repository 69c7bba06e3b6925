#!lua name=anomalydesk
--[[
AnomalyDesk server-side library (Redis Functions, Redis >= 7; the supported successor of RedisGears).

Every function works on ONE service: its keys share the hash tag {service}, so in Redis Cluster one
FCALL touches one slot. The only declared key is the service's state hash; the other keys are built
from the same prefix and tag (same slot). Sizes and the window length come from the caller (read from
the global config hash by the client), so no function touches a global key; the service's state
records the config generation it was last set to, so a caller holding an older config is refused.

Functions
  ad_version()                                            -> library version
  ad_ingest(state; prefix, service, payload)
      -> {accepted, late, sealed, duplicate, kpis_accepted, kpis_late, history_sealed}
         (accepted/late count request events and KPI reports; kpis_* the KPI reports alone)
  ad_seal(state; prefix, service, cfg_json, now_window|'', max_silent, hold_s) -> sealed (live + history)
  ad_configure(state; prefix, service, cfg_json)          -> 1 when the service was re-configured, else 0
  ad_query(state; prefix, service, what, items_json)      -> per item answer (no writes)

Errors: 'ERR anomalydesk: ...' for invalid input; 'STALECONFIG anomalydesk: ...' when the caller's
config generation is older than the one the service is set to (retryable: re-read ad:config, re-encode,
send again); 'NEEDCONFIG anomalydesk: ...' when a call carries a newer config that changes the
service's window length (retryable: call ad_configure with that config, then send again). A newer
config that only changes sketch sizes is applied by the call itself, with its writes. Every function checks everything that can fail (arguments, key types, stream ids) before
its first write, and a batch id is recorded last, so a failed call changes nothing and can be retried.

Ingest payload (JSON, built by anomalydesk.store.encoding):
  {"v": 1, "mode": "live"|"replay", "batch": id|null, "sparse": 0|1,
   "cfg": {"g": config generation, "W": window_s, "cw": cms_width, "cd": cms_depth,
           "fc": filter_capacity, "fe": filter_error, "tk": topk_k, "ret": retention,
           "be": "native"|"functions", "rm": raw stream length},
   "raw": [[endpoint, status, latency_ms, timestamp|null], ...] (optional, full-fidelity mode),
   "w": [{"win": window (ignored in live mode), "n": requests, "e4": n_4xx, "e5": n_5xx,
          "ls": latency_sum_ms, "h": [bucket, count, ...], "ep": [endpoint, count, ...],
          "st": [status, count, ...]}, ...],
   "k": [[window, name, sum, count, out_of_range, low|null, high|null, min, max], ...]}
  The whole payload is validated before anything is written: an invalid batch returns an error
  naming the offending part and changes nothing.

Windows, live stream and history (docs/engine.md "History"):
  - live mode: an event's window is the server clock's; replay mode: the payload's window.
  - A service's live stream {service}:fp starts at its first window (`first`). While nothing is sealed
    and no live-mode event arrived, an earlier replay window moves `first` back (a backfill before any
    live traffic is the start of the live stream). After that `first` is frozen:
      * a replay window before `first` is HISTORY: it goes to {service}:hist:<W>, which training,
        plots and backtests read and the detector never scores; history is sealed by its own clock,
        in time order (a history window at or before the last sealed history window is late);
        after a window-length change `first` is the first window of the new length, and a window
        reaching into the time the live stream covered at an earlier length (from `lfrom`) is late;
      * a window at or before the last sealed live window is late (counted, never merged).
  - A window-length change (ad_configure, or the first call carrying the new config) carries the
    service's open windows into windows of the new length, the first of which begins at or after the
    end of the last sealed window (stream ids never go back); live events between that end and the
    first new window go into it. Windows holding events from outside their own span are marked
    `stretched` and training leaves them out. History is kept per window length.
  - Every fingerprint carries `ws` (its window length) and `silent` (1: no event at all, a window the
    sealing fabricated for zero traffic).

Sketches (backend "functions": this library's own, in plain Redis strings/sorted sets; "native":
the RedisBloom commands built into Redis 8 / Redis Stack):
  Count-Min Sketch  width w, depth d as BITFIELD u32 counters (saturating); estimate >= truth and
                    <= truth + (e/w)*N with probability >= 1 - e^-d (N = total count added).
  Bloom filter      scalable: layers of m bits, k hashes sized for capacity and error; a full layer
                    gets a successor with twice the capacity and half the error, so it never
                    saturates; overall false-positive rate <= 2 * error.
  Top-K             Space-Saving with 10*k (at least 100) counters in a sorted set: every item with
                    true count > N/counters is listed; counts overestimate by at most N/counters.
                    Native: RedisBloom's HeavyKeeper (TOPK.*), width 10*k (at least 100), depth 7,
                    decay 0.9 -- probabilistic, counts never overestimate; recall of the true top-k on
                    Zipf streams is measured in tests/test_backends.py. Its sizes are recorded in the
                    state ('tkw'); a Top-K reserved by library 2 (width 8) is rebuilt at the next
                    ingest with the listed items and their counts.
  Size limits (cfg, refused with an error naming the field): MAX_CMS_WIDTH, MAX_CMS_DEPTH,
  MAX_CMS_COUNTERS (width*depth), MAX_FILTER_CAPACITY, MIN_FILTER_ERROR, MAX_TOPK below.

The constants between BEGIN CONTRACT and END CONTRACT are generated from src/anomalydesk/contract.py,
which owns everything this library shares with the Python side (payload, reply, key layout, limits,
version); tests/test_contract.py fails when the two disagree, or when this file changes and
LIB_VERSION does not.
]]

-- BEGIN CONTRACT: generated from src/anomalydesk/contract.py (python -m anomalydesk.contract --write)
local LIB_VERSION = '12'
local MAX_BUCKET = 200
local MAX_NAME = 256
local MAX_KPI_NAME = 128
local MAX_SERVICE_NAME = 64
local SERVICE_PATTERN = '^[A-Za-z0-9._-]+$'
local WINDOW_ENDPOINTS_CAP = 512
local OTHER_ENDPOINT = '(other)'
local TOPK_MIN_COUNTERS = 100
local TOPK_DEPTH = 7
local TOPK_DECAY = '0.9'
local BATCH_TTL = 600
local MAX_SILENT = 720
local LAT_MIN_MS = 0.1
local LAT_PER_OCTAVE = 8
local MAX_COUNT = 1000000000000
local MAX_SUM = 1e+18
local MAX_PAIRS = 4000
local MAX_EPOCH_S = 100000000000
local MAX_WINDOW_SECONDS = 86400
local MAX_CMS_WIDTH = 1000000
local MAX_CMS_DEPTH = 20
local MAX_CMS_COUNTERS = 4000000
local MAX_FILTER_CAPACITY = 10000000
local MIN_FILTER_ERROR = 1e-09
local MAX_TOPK = 1000
local PAYLOAD_VERSION = 1
local FINGERPRINT_SCHEMA = 1
local STALE = 'STALECONFIG'
local NEED_CONFIG = 'NEEDCONFIG'
local KEY_SUFFIX = { state = ':state', fp = ':fp', hist = ':hist:', open = ':open', win = ':w:', we = ':we:', wh = ':wh:', wn = ':wn:', tmp = ':rw:', cms_ep = ':cms:ep', cms_st = ':cms:st', bf = ':bf', topk = ':topk', topk_order = ':topk:order', raw = ':raw', batch = ':batch:' }
-- END CONTRACT

local function fail(msg)
  return redis.error_reply('ERR anomalydesk: ' .. msg)
end

-- redis.call(cmd, key, items...) in chunks: unpack() is limited to a few thousand values
local function call_chunked(cmd, key, items, step)
  for i = 1, #items, step do
    local j = math.min(i + step - 1, #items)
    redis.call(cmd, key, unpack(items, i, j))
  end
end

-- add incs[i] to the integer field fields[i] of a hash: one HMGET and one HSET
local function hash_add(key, fields, incs)
  if #fields == 0 then return end
  local cur = redis.call('HMGET', key, unpack(fields))
  local args = {}
  for i = 1, #fields do
    args[#args + 1] = fields[i]
    args[#args + 1] = (tonumber(cur[i]) or 0) + incs[i]
  end
  redis.call('HSET', key, unpack(args))
end

local function num(x)
  return string.format('%.17g', x)
end

-- ---------------------------------------------------------------------------------------------
-- validation (runs completely before the first write)
-- ---------------------------------------------------------------------------------------------
local function is_int(x, lo, hi)
  return type(x) == 'number' and x == math.floor(x) and x >= lo and (hi == nil or x <= hi)
end

local function is_finite(x)
  return type(x) == 'number' and x == x and x ~= math.huge and x ~= -math.huge
end

local function check_pairs(list, where, key_ok, total)
  if type(list) ~= 'table' or #list % 2 ~= 0 then
    return where .. ' must be a flat list of [key, count] pairs'
  end
  if #list > 2 * MAX_PAIRS then return where .. ' has more than ' .. MAX_PAIRS .. ' pairs (split the batch)' end
  local sum = 0
  for i = 1, #list, 2 do
    local err = key_ok(list[i])
    if err then return where .. '[' .. ((i + 1) / 2) .. ']: ' .. err end
    if not is_int(list[i + 1], 0) then
      return where .. '[' .. ((i + 1) / 2) .. ']: count must be a non-negative integer'
    end
    sum = sum + list[i + 1]
  end
  if total ~= nil and sum ~= total then
    return where .. ' counts add up to ' .. sum .. ', not n=' .. total
  end
  return nil
end

local function bucket_ok(b)
  if not is_int(b, 0, MAX_BUCKET) then return 'bucket must be an integer in 0..' .. MAX_BUCKET end
end

local function endpoint_ok(e)
  if type(e) ~= 'string' or #e == 0 or #e > MAX_NAME then
    return 'endpoint must be a string of 1..' .. MAX_NAME .. ' characters'
  end
  if e == OTHER_ENDPOINT then return 'endpoint ' .. OTHER_ENDPOINT .. ' is reserved' end
end

local function status_ok(s)
  if not is_int(s, 100, 599) then return 'status must be an integer in 100..599' end
end

-- the config part of a payload (also ad_seal's and ad_configure's cfg argument)
local function validate_cfg(c)
  if type(c) ~= 'table' then return 'cfg is required' end
  if c.g == nil then c.g = 0 end  -- a caller of library version 1 sends none
  if not is_int(c.g, 0, MAX_COUNT) then return 'cfg.g (config generation) must be a non-negative integer' end
  if not is_int(c.W, 1, MAX_WINDOW_SECONDS) then
    return 'cfg.W (window length) must be an integer number of seconds in 1..' .. MAX_WINDOW_SECONDS
  end
  if not is_int(c.cw, 1, MAX_CMS_WIDTH) then
    return 'cfg.cw (Count-Min Sketch width) must be an integer in 1..' .. MAX_CMS_WIDTH
  end
  if not is_int(c.cd, 1, MAX_CMS_DEPTH) then
    return 'cfg.cd (Count-Min Sketch depth) must be an integer in 1..' .. MAX_CMS_DEPTH
  end
  if c.cw * c.cd > MAX_CMS_COUNTERS then
    return 'cfg.cw * cfg.cd (Count-Min Sketch counters) must be at most ' .. MAX_CMS_COUNTERS
  end
  if not is_int(c.fc, 1, MAX_FILTER_CAPACITY) then
    return 'cfg.fc (filter capacity) must be an integer in 1..' .. MAX_FILTER_CAPACITY
  end
  if not is_finite(c.fe) or c.fe < MIN_FILTER_ERROR or c.fe >= 1 then
    return 'cfg.fe (filter error) must be a number in [' .. MIN_FILTER_ERROR .. ', 1)'
  end
  if not is_int(c.tk, 1, MAX_TOPK) then return 'cfg.tk (Top-K k) must be an integer in 1..' .. MAX_TOPK end
  if not is_int(c.ret, 1, MAX_COUNT) then return 'cfg.ret (retention) must be an integer in 1..' .. MAX_COUNT end
  if c.be ~= 'native' and c.be ~= 'functions' then return 'cfg.be must be native or functions' end
  return nil
end

local function validate(p, service)
  if type(p) ~= 'table' then return 'payload must be a JSON object' end
  if p.v ~= PAYLOAD_VERSION then return 'payload version must be ' .. PAYLOAD_VERSION end
  if p.mode ~= 'live' and p.mode ~= 'replay' then return 'mode must be "live" or "replay"' end
  if p.batch ~= nil and p.batch ~= cjson.null and (type(p.batch) ~= 'string' or #p.batch > 128) then
    return 'batch must be a string of at most 128 characters'
  end
  local c = p.cfg
  local cfg_err = validate_cfg(c)
  if cfg_err then return cfg_err end
  if type(p.w) ~= 'table' then return 'w must be a list of windows' end
  for i, w in ipairs(p.w) do
    local at = 'w[' .. i .. ']'
    if type(w) ~= 'table' then return at .. ' must be an object' end
    if p.mode == 'replay' and not is_int(w.win, 1, MAX_EPOCH_S / c.W) then
      return at .. '.win must be a positive integer (a window index, not a time far in the future)'
    end
    if not is_int(w.n, 0, MAX_COUNT) then return at .. '.n must be an integer in 0..' .. MAX_COUNT end
    if not is_int(w.e4, 0, w.n) or not is_int(w.e5, 0, w.n) or w.e4 + w.e5 > w.n then
      return at .. '.e4/e5 must be integers within n'
    end
    if not is_finite(w.ls) or w.ls < 0 or w.ls > MAX_SUM then
      return at .. '.ls must be a latency sum in 0..' .. MAX_SUM
    end
    local err = check_pairs(w.h, at .. '.h', bucket_ok, w.n)
      or check_pairs(w.ep, at .. '.ep', endpoint_ok, w.n)
      or check_pairs(w.st, at .. '.st', status_ok, w.n)
    if err then return err end
  end
  if p.raw ~= nil then
    if type(p.raw) ~= 'table' then return 'raw must be a list' end
    if not is_int(c.rm, 1, MAX_COUNT) then return 'cfg.rm (raw stream length) must be a positive integer' end
    for i, e in ipairs(p.raw) do
      local at = 'raw[' .. i .. ']'
      if type(e) ~= 'table' then return at .. ' must be a list' end
      local err = endpoint_ok(e[1]) or status_ok(e[2])
      if err then return at .. ': ' .. err end
      if not is_finite(e[3]) or e[3] < 0 then return at .. ': latency must be finite and >= 0' end
      if e[4] ~= nil and e[4] ~= cjson.null and not is_finite(e[4]) then return at .. ': bad timestamp' end
    end
  end
  if p.k ~= nil and type(p.k) ~= 'table' then return 'k must be a list' end
  for i, k in ipairs(p.k or {}) do
    local at = 'k[' .. i .. ']'
    if type(k) ~= 'table' then return at .. ' must be a list' end
    if p.mode == 'replay' and not is_int(k[1], 1, MAX_EPOCH_S / c.W) then
      return at .. ': window must be a positive integer'
    end
    if type(k[2]) ~= 'string' or #k[2] == 0 or #k[2] > MAX_KPI_NAME then return at .. ': bad name' end
    if not is_finite(k[3]) or math.abs(k[3]) > MAX_SUM then return at .. ': sum must be within +-' .. MAX_SUM end
    if not is_int(k[4], 1, MAX_COUNT) or not is_int(k[5], 0, k[4]) then return at .. ': count/out_of_range' end
    for j = 6, 9 do
      if k[j] ~= nil and k[j] ~= cjson.null and (not is_finite(k[j]) or math.abs(k[j]) > MAX_SUM) then
        return at .. ': range bounds and min/max must be numbers within +-' .. MAX_SUM .. ' or null'
      end
    end
    if type(k[8]) == 'number' and type(k[9]) == 'number' and k[8] > k[9] then return at .. ': min > max' end
  end
  return nil
end

-- ---------------------------------------------------------------------------------------------
-- hashing shared by the sketches: four 32-bit values from one SHA-1
-- ---------------------------------------------------------------------------------------------
local function hashes(item)
  local h = redis.sha1hex(item)
  return tonumber(string.sub(h, 1, 8), 16), tonumber(string.sub(h, 9, 16), 16),
    tonumber(string.sub(h, 17, 24), 16), tonumber(string.sub(h, 25, 32), 16)
end

-- ---------------------------------------------------------------------------------------------
-- sketches, library implementation
-- ---------------------------------------------------------------------------------------------
-- hashes() memoised for one call: the Count-Min Sketch and every filter layer hash the same item
local function hash_memo()
  local memo = {}
  return function(item)
    local h = memo[item]
    if h == nil then
      h = { hashes(item) }
      memo[item] = h
    end
    return h[1], h[2], h[3], h[4]
  end
end

-- Bulk updates (one GET and one SETRANGE of the whole sketch string, bits and counters changed in Lua)
-- leave exactly the bytes the per-item BITFIELD calls leave; they pay for the copy of the string and
-- save the per-counter cost of BITFIELD (about 1-2 us per counter inside Lua, measured). Chosen when the
-- sketch has at most this many bytes per item of the call (docs/engine.md "Cost per batch").
local BULK_BYTES_PER_ITEM = 512
local BIT_WEIGHT = { [0] = 128, 64, 32, 16, 8, 4, 2, 1 }  -- bit i of a byte, most significant first (SETBIT order)
local U32_MAX = 4294967295

-- a string key's value, '' when it does not exist
local function get_bytes(key)
  return redis.call('GET', key) or ''
end

-- s with the byte runs of `edits` ({{position from 0, bytes}, ...}, ascending, not overlapping) written
-- over it, zero-filled where a run starts past its end: what the same BITFIELD writes leave
local function splice(s, edits)
  local out, at, len = {}, 0, #s
  for _, e in ipairs(edits) do
    local pos = e[1]
    if pos > at then
      if pos <= len then
        out[#out + 1] = string.sub(s, at + 1, pos)
      else
        if at < len then out[#out + 1] = string.sub(s, at + 1) end
        out[#out + 1] = string.rep('\0', pos - math.max(at, len))
      end
    end
    out[#out + 1] = e[2]
    at = pos + #e[2]
  end
  if at < len then out[#out + 1] = string.sub(s, at + 1) end
  return table.concat(out)
end

local function cms_offsets(item, width, depth, hf)
  local h1, h2 = (hf or hashes)(item)
  h2 = h2 % (width - 1 > 0 and width - 1 or 1) + 1
  local offs = {}
  for i = 0, depth - 1 do
    offs[#offs + 1] = i * width + (h1 + i * h2) % width
  end
  return offs
end

-- the bulk form of cms_incr: increments summed per counter (saturating adds of non-negative counts
-- commute), counters read and written as big-endian u32 (BITFIELD's layout)
local function cms_incr_bulk(key, width, depth, items, hf)
  local inc, offs = {}, {}
  for i = 1, #items, 2 do
    local cnt = items[i + 1]
    for _, off in ipairs(cms_offsets(tostring(items[i]), width, depth, hf)) do
      if inc[off] == nil then
        offs[#offs + 1] = off; inc[off] = cnt
      else
        inc[off] = inc[off] + cnt
      end
    end
  end
  table.sort(offs)
  local s = get_bytes(key)
  local edits, len = {}, #s
  for i, off in ipairs(offs) do
    local v = inc[off]
    if off * 4 + 4 <= len then
      v = v + struct.unpack('>I4', s, off * 4 + 1)
    elseif off * 4 < len then  -- a counter cut short by the end of the string (not one BITFIELD wrote)
      v = v + struct.unpack('>I4', string.sub(s, off * 4 + 1) .. string.rep('\0', off * 4 + 4 - len))
    end
    if v > U32_MAX then v = U32_MAX end
    edits[i] = { off * 4, struct.pack('>I4', v) }
  end
  redis.call('SETRANGE', key, 0, splice(s, edits))
end

local function cms_incr(key, width, depth, items, hf)
  -- items: {name, count, name, count, ...}; one BITFIELD call per item (all rows), or one bulk update
  if #items > 0 and width * depth * 4 <= BULK_BYTES_PER_ITEM * (#items / 2) then
    return cms_incr_bulk(key, width, depth, items, hf)
  end
  for i = 1, #items, 2 do
    local args = { key, 'OVERFLOW', 'SAT' }
    for _, off in ipairs(cms_offsets(tostring(items[i]), width, depth, hf)) do
      args[#args + 1] = 'INCRBY'; args[#args + 1] = 'u32'; args[#args + 1] = '#' .. off
      args[#args + 1] = items[i + 1]
    end
    redis.call('BITFIELD', unpack(args))
  end
end

local function cms_query(key, width, depth, item)
  local args = { key }
  for _, off in ipairs(cms_offsets(item, width, depth)) do
    args[#args + 1] = 'GET'; args[#args + 1] = 'u32'; args[#args + 1] = '#' .. off
  end
  local best
  for _, v in ipairs(redis.call('BITFIELD_RO', unpack(args))) do
    if best == nil or v < best then best = v end
  end
  return best or 0
end

local function bloom_dims(capacity, err)
  local m = math.ceil(-capacity * math.log(err) / (math.log(2) ^ 2))
  local k = math.max(1, math.floor(m / capacity * math.log(2) + 0.5))
  return m, k
end

local function bloom_positions(item, m, k, hf)
  local _, _, h3, h4 = (hf or hashes)(item)
  h4 = h4 % (m - 1) + 1
  local pos = {}
  for i = 0, k - 1 do pos[#pos + 1] = (h3 + i * h4) % m end
  return pos
end

local function bloom_layer_has(key, m, k, item, hf)
  local args = { key }
  for _, p in ipairs(bloom_positions(item, m, k, hf)) do
    args[#args + 1] = 'GET'; args[#args + 1] = 'u1'; args[#args + 1] = p
  end
  for _, v in ipairs(redis.call('BITFIELD_RO', unpack(args))) do
    if v == 0 then return false end
  end
  return true
end

local function bloom_layers(state)
  local n = tonumber(redis.call('HGET', state, 'bf_layers') or '0')
  local layers = {}
  for i = 1, n do
    local f = redis.call('HMGET', state, 'bf_m' .. i, 'bf_k' .. i, 'bf_cap' .. i, 'bf_n' .. i)
    layers[i] = { m = tonumber(f[1]), k = tonumber(f[2]), cap = tonumber(f[3]), n = tonumber(f[4]) }
  end
  return layers
end

local function bloom_exists(base, item, layers)
  for i, l in ipairs(layers) do
    if bloom_layer_has(base .. ':' .. i, l.m, l.k, item) then return true end
  end
  return false
end

local function bloom_add_layer(state, capacity, err)
  local i = tonumber(redis.call('HINCRBY', state, 'bf_layers', 1))
  local m, k = bloom_dims(capacity, err)
  redis.call('HSET', state, 'bf_m' .. i, m, 'bf_k' .. i, k, 'bf_cap' .. i, capacity, 'bf_n' .. i, 0,
    'bf_err' .. i, num(err))
  return i
end

-- the layer new items go into (index, layer): the last one, or a new one (twice the capacity, half the
-- error) when the last is full; `layers` is kept in step
local function bloom_writable(state, layers)
  local last = #layers
  local l = layers[last]
  if l.n >= l.cap then
    local err = tonumber(redis.call('HGET', state, 'bf_err' .. last)) / 2
    last = bloom_add_layer(state, l.cap * 2, err)
    local f = redis.call('HMGET', state, 'bf_m' .. last, 'bf_k' .. last, 'bf_cap' .. last)
    l = { m = tonumber(f[1]), k = tonumber(f[2]), cap = tonumber(f[3]), n = 0 }
    layers[last] = l
  end
  return last, l
end

-- returns true when item was not in the filter (a first sighting); `layers` is bloom_layers(state),
-- loaded once per call and kept in step here
local function bloom_add(state, base, item, layers, hf)
  for i, l in ipairs(layers) do
    if bloom_layer_has(base .. ':' .. i, l.m, l.k, item, hf) then return false end
  end
  local last, l = bloom_writable(state, layers)
  local args = { base .. ':' .. last }
  for _, p in ipairs(bloom_positions(item, l.m, l.k, hf)) do
    args[#args + 1] = 'SET'; args[#args + 1] = 'u1'; args[#args + 1] = p; args[#args + 1] = 1
  end
  redis.call('BITFIELD', unpack(args))
  redis.call('HINCRBY', state, 'bf_n' .. last, 1)
  l.n = l.n + 1
  return true
end

-- bloom_add for every item of `items` in order, as one bulk update per layer (each layer's string read
-- once, its bits tested and set in Lua, written back once); returns {item = true} for first sightings
local function bloom_add_bulk(state, base, items, layers, hf)
  local bytes, changed = {}, {}  -- per layer: its string, and the bytes this call changed (index from 0)
  local function layer(i)
    if bytes[i] == nil then bytes[i] = get_bytes(base .. ':' .. i); changed[i] = {} end
    return bytes[i], changed[i]
  end
  local floor, byte = math.floor, string.byte
  local function has(i, l, item)
    local s, ch = layer(i)
    for _, p in ipairs(bloom_positions(item, l.m, l.k, hf)) do
      local at = floor(p / 8)
      local v = ch[at] or byte(s, at + 1) or 0
      if floor(v / BIT_WEIGHT[p % 8]) % 2 == 0 then return false end
    end
    return true
  end
  local first, added = {}, {}
  for _, item in ipairs(items) do
    local found = false
    for i, l in ipairs(layers) do
      if has(i, l, item) then found = true; break end
    end
    if not found then
      local last, l = bloom_writable(state, layers)
      local s, ch = layer(last)
      for _, p in ipairs(bloom_positions(item, l.m, l.k, hf)) do
        local at = floor(p / 8)
        local v = ch[at] or byte(s, at + 1) or 0
        if floor(v / BIT_WEIGHT[p % 8]) % 2 == 0 then ch[at] = v + BIT_WEIGHT[p % 8] end
      end
      l.n = l.n + 1
      added[last] = (added[last] or 0) + 1
      first[item] = true
    end
  end
  for i, ch in pairs(changed) do
    local at = {}
    for pos in pairs(ch) do at[#at + 1] = pos end
    if #at > 0 then
      table.sort(at)  -- numbers, no comparison function: a Lua one costs more than the rest of the update
      local edits = {}
      for j, pos in ipairs(at) do edits[j] = { pos, string.char(ch[pos]) } end
      redis.call('SETRANGE', base .. ':' .. i, 0, splice(bytes[i], edits))
    end
  end
  for i, n in pairs(added) do redis.call('HINCRBY', state, 'bf_n' .. i, n) end
  return first
end

-- bloom_add for every item of `items` (in order): per item, or as one bulk update when the layers are
-- small beside the items; returns {item = true} for first sightings
local function bloom_add_all(state, base, items, layers, hf)
  local size = 0
  for _, l in ipairs(layers) do size = size + math.ceil(l.m / 8) end
  if #items > 0 and size <= BULK_BYTES_PER_ITEM * #items then
    return bloom_add_bulk(state, base, items, layers, hf)
  end
  local first = {}
  for _, item in ipairs(items) do
    if bloom_add(state, base, item, layers, hf) then first[item] = true end
  end
  return first
end

-- Space-Saving over items {name, count, ...} (each name once), in order: a listed item's counter grows;
-- an unlisted one takes a free counter, or the smallest counter (lowest score, then name: what ZPOPMIN
-- takes) with that count added. The scores of the listed items come in one ZMSCORE; when no counter has
-- to be taken over, all updates are one ZADD. Otherwise the whole sorted set (at most `counters`
-- entries) is run through the items in Lua on a heap and written back in one ZREM and one ZADD; ties
-- are broken by name in Redis's byte order, which Lua's string comparison (strcoll, the server's
-- locale) need not follow, so each name's place in that order comes from a temporary sorted set
-- (`order`, deleted before the call returns).
local function topk_update(key, counters, items, order)
  local names = {}
  for i = 1, #items, 2 do names[#names + 1] = items[i] end
  if #names == 0 then return end
  local scores = {}
  for i = 1, #names, 1000 do
    local part = redis.call('ZMSCORE', key, unpack(names, i, math.min(i + 999, #names)))
    for j = 1, math.min(1000, #names - i + 1) do scores[i + j - 1] = part[j] end
  end
  local card, unlisted = redis.call('ZCARD', key), 0
  for i = 1, #names do if not scores[i] then unlisted = unlisted + 1 end end
  if unlisted <= counters - card then
    local args = {}
    for i, name in ipairs(names) do
      local cnt = items[2 * i]
      args[#args + 1] = scores[i] and num(tonumber(scores[i]) + cnt) or cnt
      args[#args + 1] = name
    end
    call_chunked('ZADD', key, args, 1000)
    return
  end
  local cur = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  -- every name involved, ranked in byte order
  local zargs = {}
  for i = 1, #cur, 2 do zargs[#zargs + 1] = 0; zargs[#zargs + 1] = cur[i] end
  for i, name in ipairs(names) do
    if not scores[i] then zargs[#zargs + 1] = 0; zargs[#zargs + 1] = name end
  end
  redis.call('DEL', order)
  call_chunked('ZADD', order, zargs, 1000)
  local rank = {}
  for i, name in ipairs(redis.call('ZRANGE', order, 0, -1)) do rank[name] = i end
  redis.call('DEL', order)
  -- a min-heap on (score, rank): hs scores, hr ranks, hn names, at[name] the slot
  local hs, hr, hn, at, size = {}, {}, {}, {}, 0
  local function less(a, b) return hs[a] < hs[b] or (hs[a] == hs[b] and hr[a] < hr[b]) end
  local function swap(a, b)
    hs[a], hs[b] = hs[b], hs[a]; hr[a], hr[b] = hr[b], hr[a]; hn[a], hn[b] = hn[b], hn[a]
    at[hn[a]] = a; at[hn[b]] = b
  end
  local function up(i)
    while i > 1 do
      local parent = math.floor(i / 2)
      if not less(i, parent) then return end
      swap(i, parent); i = parent
    end
  end
  local function down(i)
    while true do
      local l, smallest = 2 * i, i
      if l <= size and less(l, smallest) then smallest = l end
      if l + 1 <= size and less(l + 1, smallest) then smallest = l + 1 end
      if smallest == i then return end
      swap(i, smallest); i = smallest
    end
  end
  local original = {}
  for i = 1, #cur, 2 do  -- ZRANGE's order is the heap order already
    size = size + 1
    hs[size], hr[size], hn[size] = tonumber(cur[i + 1]), rank[cur[i]], cur[i]
    at[cur[i]] = size
    original[cur[i]] = hs[size]
  end
  for i, name in ipairs(names) do
    local cnt = items[2 * i]
    local slot = at[name]
    if slot then
      hs[slot] = hs[slot] + cnt; down(slot)
    elseif size < counters then
      size = size + 1
      hs[size], hr[size], hn[size] = cnt, rank[name], name
      at[name] = size; up(size)
    else
      at[hn[1]] = nil
      hs[1], hr[1], hn[1] = hs[1] + cnt, rank[name], name
      at[name] = 1; down(1)
    end
  end
  local gone, set = {}, {}
  for name in pairs(original) do if not at[name] then gone[#gone + 1] = name end end
  for slot = 1, size do
    if original[hn[slot]] ~= hs[slot] then set[#set + 1] = num(hs[slot]); set[#set + 1] = hn[slot] end
  end
  if #gone > 0 then call_chunked('ZREM', key, gone, 1000) end
  if #set > 0 then call_chunked('ZADD', key, set, 1000) end
end

-- ---------------------------------------------------------------------------------------------
-- per-service keys, state, and the checks made before the first write
-- ---------------------------------------------------------------------------------------------
local function keyset(prefix, service)
  local t, K = prefix .. '{' .. service .. '}', KEY_SUFFIX
  return {
    tag = t, state = t .. K.state, fp = t .. K.fp, cms_ep = t .. K.cms_ep, cms_st = t .. K.cms_st,
    bf = t .. K.bf, topk = t .. K.topk, topk_order = t .. K.topk_order, open = t .. K.open, raw = t .. K.raw,
    hist = function(W) return t .. K.hist .. W end,
    batch = function(id) return t .. K.batch .. id end,
    win = function(w) return t .. K.win .. w end,
    we = function(w) return t .. K.we .. w end,
    wh = function(w) return t .. K.wh .. w end,
    wn = function(w) return t .. K.wn .. w end,
    tmp = function(kind, w) return t .. K.tmp .. kind .. ':' .. w end,
  }
end

-- the state hash: window bookkeeping (first, sealed, live, clock, clock_at; lfrom: the epoch second the
-- live stream began at, kept across window-length changes), history (hsealed, hclock, hclock_at), the
-- config the service is set to (g, W; rwf/rwt after a window-length change) and the sizes its sketches
-- were made with
local STATE_FIELDS = { 'first', 'sealed', 'live', 'clock', 'clock_at', 'sparse', 'g', 'W', 'hsealed',
  'hclock', 'hclock_at', 'rwf', 'rwt', 'sk', 'be', 'cms_w', 'cms_d', 'topk_k', 'fc', 'fe', 'bf_layers', 'tkw',
  'lfrom' }
local NUMERIC = { first = true, sealed = true, clock = true, clock_at = true, g = true, W = true, lfrom = true,
  hsealed = true, hclock = true, hclock_at = true, rwf = true, rwt = true, cms_w = true, cms_d = true,
  topk_k = true, fc = true, fe = true, bf_layers = true, tkw = true }

local function read_state(state)
  local v = redis.call('HMGET', state, unpack(STATE_FIELDS))
  local st = {}
  for i, f in ipairs(STATE_FIELDS) do
    if v[i] then st[f] = NUMERIC[f] and tonumber(v[i]) or v[i] end
  end
  return st
end

local HASH, ZSET, STREAM, STRING = { hash = true }, { zset = true }, { stream = true }, { string = true }
local SET = { set = true }
local HLL = { string = true, hll = true }
local HLL_DENSE_BYTES = 16 + 12288  -- header and 16,384 6-bit registers
local NATIVE_TYPES = { cms = { ['CMSk-TYPE'] = true }, bf = { ['MBbloom--'] = true }, topk = { ['TopK-TYPE'] = true } }

local function key_type(key)
  return redis.call('TYPE', key)['ok']
end

-- why `key` cannot be used as one of the types in `wanted`, or nil (also when it does not exist)
local function type_error(key, wanted)
  local t = key_type(key)
  if t == 'none' then return nil end
  if not wanted[t] then return key .. ' holds a ' .. t .. ' value' end
  if wanted.hll then  -- what PFADD checks: the magic, the encoding, a dense one's size (no PFCOUNT: it costs)
    local head = redis.call('GETRANGE', key, 0, 4)
    local enc = string.byte(head, 5)
    if string.sub(head, 1, 4) ~= 'HYLL' or (enc ~= 0 and enc ~= 1)
      or (enc == 0 and redis.call('STRLEN', key) ~= HLL_DENSE_BYTES) then
      return key .. ' is not a HyperLogLog'
    end
  end
  return nil
end

-- the first failing check of a list of {key, wanted types}
local function first_error(checks)
  for _, c in ipairs(checks) do
    local err = type_error(c[1], c[2])
    if err then return err end
  end
  return nil
end

local function window_checks(ks, w, checks)
  checks[#checks + 1] = { ks.win(w), HASH }
  checks[#checks + 1] = { ks.we(w), HASH }
  checks[#checks + 1] = { ks.wh(w), HLL }
  checks[#checks + 1] = { ks.wn(w), SET }
end

local function sketch_checks(ks, c, st, checks)
  if c.be == 'native' then
    checks[#checks + 1] = { ks.cms_ep, NATIVE_TYPES.cms }
    checks[#checks + 1] = { ks.cms_st, NATIVE_TYPES.cms }
    checks[#checks + 1] = { ks.bf, NATIVE_TYPES.bf }
    checks[#checks + 1] = { ks.topk, NATIVE_TYPES.topk }
  else
    checks[#checks + 1] = { ks.cms_ep, STRING }
    checks[#checks + 1] = { ks.cms_st, STRING }
    checks[#checks + 1] = { ks.topk, ZSET }
    checks[#checks + 1] = { ks.topk_order, ZSET }
    for i = 1, math.max(st.bf_layers or 0, 1) do checks[#checks + 1] = { ks.bf .. ':' .. i, STRING } end
  end
end

-- the layers a functions-backend filter may grow into while `items` new endpoints are added (a full
-- layer gets a successor of twice its capacity, created midway through the writes)
local function bloom_growth_checks(state, ks, c, st, items, checks)
  local n = st.bf_layers or 0
  local cap, count = c.fc, 0
  if n > 0 then
    local f = redis.call('HMGET', state, 'bf_cap' .. n, 'bf_n' .. n)
    cap, count = tonumber(f[1]) or c.fc, tonumber(f[2]) or 0
  else
    n = 1  -- created by this call
  end
  local room = cap - count
  while room < items do
    n = n + 1; cap = cap * 2; room = room + cap
    checks[#checks + 1] = { ks.bf .. ':' .. n, STRING }
  end
end

-- a window's fingerprint entry id: its start in milliseconds, sequence 1
local function entry_ms(w, W)
  return w * W * 1000
end

-- (ms, seq) of the last id a stream ever generated, or nil
local function stream_last_id(key)
  if key_type(key) ~= 'stream' then return nil end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local ms, seq = string.match(info[i + 1], '^(%d+)-(%d+)$')
      return tonumber(ms), tonumber(seq)
    end
  end
  return nil
end

-- why window `w` (length W) cannot be appended to stream `key` (its id must be greater than the last), or nil
local function id_error(key, w, W)
  local ms, seq = stream_last_id(key)
  if ms and (entry_ms(w, W) < ms or (entry_ms(w, W) == ms and seq >= 1)) then
    return key .. ' already has an entry at or after window ' .. w .. ' (last id ' .. ms .. '-' .. seq .. ')'
  end
  return nil
end

local function same_sketches(st, c)
  return st.be == c.be and st.cms_w == c.cw and st.cms_d == c.cd and st.topk_k == c.tk and st.fc == c.fc
    and st.fe == tonumber(num(c.fe))
end

-- why a caller's config is older than the service's (retryable), or nil
local function stale_reason(st, c)
  if st.g == nil then return nil end
  if c.g < st.g then
    return 'config changed (the service is at generation ' .. st.g .. ', this call carries ' .. c.g
      .. '): re-read the config and send again'
  end
  if c.g == st.g and st.W ~= nil and st.W ~= c.W then
    return 'config changed: this call counts in ' .. c.W .. '-s windows, the service in ' .. st.W .. '-s windows'
  end
  if c.g == st.g and st.sk == '1' and not same_sketches(st, c) then
    return 'config changed: this call carries other sketch sizes than the service was set up with'
  end
  return nil
end

local function needs_configure(st, c)
  return st.g == nil or c.g > st.g
end

-- RedisBloom refuses a TOPK.INCRBY increment above 100,000 (an error after this call's first writes):
-- larger counts go as several increments of the same item.
-- Heaviest first: HeavyKeeper lets an item take a counter held by another only by decaying it one unit at
-- a time, with chance 0.9^count, so the first item of a batch to reach a counter keeps it with its whole
-- batch count; an endpoint arriving later in the batch cannot displace a holder of more than ~80. In
-- table order, the third heaviest endpoint of a Zipf stream (4 % of 1M events, batches of 200,000) lost
-- all 7 of its counters in about one run in four and was missing from TOPK.LIST (tests/test_sketches_zipf.py).
-- Only the order of the heavier items matters (a holder of c units gives way with chance 0.9^c per unit:
-- below TOPK_SORTED_MIN = 16 a later item still takes it within a few units), so only they are sorted;
-- the many light endpoints of a large batch follow in table order (sorting all 50,000 of a batch cost 16 %).
local TOPK_MAX_INCREMENT = 100000
local TOPK_SORTED_MIN = 16

local function topk_increments(items)
  local heavy, light = {}, {}
  for i = 1, #items, 2 do
    local n = tonumber(items[i + 1])
    if n >= TOPK_SORTED_MIN then heavy[#heavy + 1] = { items[i], n } else light[#light + 1] = { items[i], n } end
  end
  table.sort(heavy, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] < b[1]
  end)
  local out = {}
  for _, list in ipairs({ heavy, light }) do
    for _, p in ipairs(list) do
      local left = p[2]
      while left > 0 do
        local step = math.min(left, TOPK_MAX_INCREMENT)
        out[#out + 1] = p[1]; out[#out + 1] = step
        left = left - step
      end
    end
  end
  return out
end

-- Top-K counters (functions) or HeavyKeeper width (native) for k: the reference example of RedisBloom
-- reserves 2,000 x 7 for k = 50; 10*k keeps the true top-k on seeded Zipf streams (tests/test_backends.py)
local function topk_width(k)
  return math.max(TOPK_MIN_COUNTERS, 10 * k)
end

local function ensure_sketches(state, ks, c)
  if redis.call('HGET', state, 'sk') == '1' then return end
  if c.be == 'native' then
    redis.call('CMS.INITBYDIM', ks.cms_ep, c.cw, c.cd)
    redis.call('CMS.INITBYDIM', ks.cms_st, c.cw, c.cd)
    redis.call('BF.RESERVE', ks.bf, num(c.fe), c.fc, 'EXPANSION', 2)
    redis.call('TOPK.RESERVE', ks.topk, c.tk, topk_width(c.tk), TOPK_DEPTH, TOPK_DECAY)
  else
    bloom_add_layer(state, c.fc, c.fe)
  end
  redis.call('HSET', state, 'sk', '1', 'be', c.be, 'cms_w', c.cw, 'cms_d', c.cd, 'topk_k', c.tk,
    'fc', c.fc, 'fe', num(c.fe), 'tkw', topk_width(c.tk))
end

-- a native Top-K reserved before its width was recorded (library 2 reserved 8 x 7 whatever k was, and
-- lost most heavy hitters): reserved again with today's sizes, keeping the items it lists and their counts
local function resize_native_topk(state, ks, st)
  if st.sk ~= '1' or st.be ~= 'native' or st.tkw ~= nil then return end
  local listed = redis.call('TOPK.LIST', ks.topk, 'WITHCOUNT')
  redis.call('DEL', ks.topk)
  redis.call('TOPK.RESERVE', ks.topk, st.topk_k, topk_width(st.topk_k), TOPK_DEPTH, TOPK_DECAY)
  local items = {}
  for i = 1, #listed, 2 do
    if listed[i] and tonumber(listed[i + 1]) and tonumber(listed[i + 1]) > 0 then
      items[#items + 1] = listed[i]; items[#items + 1] = listed[i + 1]
    end
  end
  if #items > 0 then call_chunked('TOPK.INCRBY', ks.topk, topk_increments(items), 1000) end
  redis.call('HSET', state, 'tkw', topk_width(st.topk_k))
end

-- drop a service's sketches (recreated with the current sizes on its next ingest)
local function drop_sketches(state, ks, st)
  redis.call('DEL', ks.cms_ep, ks.cms_st, ks.bf, ks.topk)
  for i = 1, (st.bf_layers or 0) do
    redis.call('DEL', ks.bf .. ':' .. i)
    redis.call('HDEL', state, 'bf_m' .. i, 'bf_k' .. i, 'bf_cap' .. i, 'bf_n' .. i, 'bf_err' .. i)
  end
  redis.call('HDEL', state, 'sk', 'bf_layers', 'be', 'cms_w', 'cms_d', 'topk_k', 'fc', 'fe', 'tkw')
end

-- ---------------------------------------------------------------------------------------------
-- sealing: closed windows → fingerprints (exactly once: the watermark and the stream id, both moved
-- inside one atomic function). Planned and checked first, written after.
-- ---------------------------------------------------------------------------------------------
local function bucket_value(b)
  if b <= 0 then return LAT_MIN_MS / 2 end
  local lo = LAT_MIN_MS * 2 ^ ((b - 1) / LAT_PER_OCTAVE)
  local hi = LAT_MIN_MS * 2 ^ (b / LAT_PER_OCTAVE)
  return math.sqrt(lo * hi)
end

local function quantiles(hist, n, qs)
  local out = {}
  if n == 0 then
    for i = 1, #qs do out[i] = 0 end
    return out
  end
  table.sort(hist, function(a, b) return a[1] < b[1] end)
  local cum, qi = 0, 1
  for _, hb in ipairs(hist) do
    cum = cum + hb[2]
    while qi <= #qs and cum >= qs[qi] * n do
      out[qi] = bucket_value(hb[1]); qi = qi + 1
    end
  end
  while qi <= #qs do out[qi] = bucket_value(hist[#hist][1]); qi = qi + 1 end
  return out
end

local function fingerprint(ks, w, W, sparse, has_data)
  local a = {}
  if has_data then
    local flat = redis.call('HGETALL', ks.win(w))
    for i = 1, #flat, 2 do a[flat[i]] = flat[i + 1] end
  end
  local n = tonumber(a.n or '0')
  local hist, kpi = {}, {}
  for f, v in pairs(a) do
    local b = string.match(f, '^h(%d+)$')
    if b then hist[#hist + 1] = { tonumber(b), tonumber(v) } end
    local name, part = string.match(f, '^k:(.+):(%a+)$')
    if name then
      kpi[name] = kpi[name] or {}
      kpi[name][part] = tonumber(v)
    end
  end
  local q = quantiles(hist, n, { 0.5, 0.95, 0.99 })
  -- the endpoint mix: exact over the first WINDOW_ENDPOINTS_CAP distinct endpoints of the window; the
  -- rest (OTHER_ENDPOINT's count) spread evenly over the tail's distinct endpoints, which the window's
  -- HyperLogLog counts, so a window of 50,000 endpoints is not scored as 513
  local top, entropy, distinct = 0, 0, 0
  if n > 0 then
    distinct = redis.call('PFCOUNT', ks.wh(w))
    local counts, other, named = redis.call('HGETALL', ks.we(w)), 0, 0
    for i = 1, #counts, 2 do
      local c = tonumber(counts[i + 1])
      if counts[i] == OTHER_ENDPOINT then
        other = c
      elseif c > 0 then
        local p = c / n
        entropy = entropy - p * math.log(p) / math.log(2)
        if p > top then top = p end
        named = named + 1
      end
    end
    if other > 0 then
      -- the HyperLogLog's error (0.81 %) is as large as a small tail: at least 2.5 % of the named count
      local each = other / n / math.max(1, distinct - named, math.ceil(0.025 * named))
      entropy = entropy - (other / n) * math.log(each) / math.log(2)
      if each > top then top = each end
    end
  end
  local kpis, ranges, level_sum, level_n, out_of_range = {}, {}, 0, 0, 0
  for name, k in pairs(kpi) do
    local mean = k.s / k.c
    kpis[name] = mean
    if k.lo and k.hi then ranges[name] = { k.lo, k.hi, k.mn or mean, k.mx or mean } end
    out_of_range = out_of_range + (k.o or 0)
    if k.lo and k.hi and (k.lo + k.hi) ~= 0 then
      level_sum = level_sum + mean / ((k.lo + k.hi) / 2); level_n = level_n + 1
    end
  end
  local silent = n == 0 and next(kpi) == nil
  local no_data = (sparse and silent) and '1' or '0'
  return {
    'requests', n,
    'rate_4xx', n > 0 and num(tonumber(a.e4 or '0') / n) or 0,
    'rate_5xx', n > 0 and num(tonumber(a.e5 or '0') / n) or 0,
    'latency_p50_ms', num(q[1]), 'latency_p95_ms', num(q[2]), 'latency_p99_ms', num(q[3]),
    'latency_mean_ms', n > 0 and num(tonumber(a.ls or '0') / n) or 0,
    'endpoints_distinct', distinct,
    'new_interactions', tonumber(a.new or '0'),
    'top_endpoint_share', num(top),
    'endpoint_entropy', num(entropy),
    'kpi_level', level_n > 0 and num(level_sum / level_n) or 0,
    'kpi_out_of_range', out_of_range,
    'no_data', no_data,
    'kpis', next(kpis) and cjson.encode(kpis) or '',
    'kpi_ranges', next(ranges) and cjson.encode(ranges) or '',
    'ws', W,
    'silent', silent and '1' or '0',
    'stretched', a.rw and '1' or '0',
  }
end

local function server_window(W)
  local t = redis.call('TIME')
  return math.floor((tonumber(t[1]) + tonumber(t[2]) / 1e6) / W), tonumber(t[1])
end

-- The windows to seal in [from, upto): every window holding data (listed in ks.open, or in `extra`,
-- the windows this call is about to write) and at most max_silent silent windows before each and
-- after the last. So the work is the windows with data plus at most max_silent per silence, never the
-- length of a gap (a backfill from years ago would otherwise loop over millions of windows with the
-- server blocked, or drop the data it skipped). Returns the plan (ascending), the set of windows
-- holding data, and the number of silent windows skipped.
local function seal_plan(ks, from, upto, max_silent, extra)
  local data, seen = {}, {}
  if upto <= from then return { windows = {}, seen = seen, skipped = 0, from = from, upto = upto } end
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', ks.open, from, upto - 1)) do
    w = tonumber(w)
    if not seen[w] then data[#data + 1] = w; seen[w] = true end
  end
  for w in pairs(extra or {}) do
    if w >= from and w < upto and not seen[w] then data[#data + 1] = w; seen[w] = true end
  end
  for w = from, math.min(upto - 1, from + max_silent) do  -- windows opened before ks.open existed
    if not seen[w] and redis.call('EXISTS', ks.win(w)) == 1 then data[#data + 1] = w; seen[w] = true end
  end
  table.sort(data)
  data[#data + 1] = upto  -- sentinel: the silence after the last window with data
  local plan, skipped, cursor = {}, 0, from
  for _, d in ipairs(data) do
    local run_from = cursor
    if d - cursor > max_silent then
      skipped = skipped + (d - max_silent - cursor)
      run_from = d - max_silent
    end
    for w = run_from, math.min(d, upto - 1) do plan[#plan + 1] = w end
    cursor = d + 1
  end
  return { windows = plan, seen = seen, skipped = skipped, from = from, upto = upto }
end

-- the checks a seal plan needs (appended to `checks`); an id that cannot be appended is returned
local function seal_checks(ks, plan, stream, W, checks)
  if plan == nil or #plan.windows == 0 then return nil end
  for w in pairs(plan.seen) do window_checks(ks, w, checks) end
  checks[#checks + 1] = { stream, STREAM }
  return id_error(stream, plan.windows[1], W)
end

-- write a checked plan: the fingerprints, then the watermark `mark` (state field) moved to upto - 1
local function seal_write(state, ks, plan, stream, W, retention, sparse, mark)
  if plan == nil then return 0 end
  for _, w in ipairs(plan.windows) do
    local fields = fingerprint(ks, w, W, sparse, plan.seen[w])
    redis.call('XADD', stream, 'MAXLEN', '~', retention, entry_ms(w, W) .. '-1',
      'window', w, 'start', w * W, 'schema', FINGERPRINT_SCHEMA, unpack(fields))
    if plan.seen[w] then redis.call('DEL', ks.win(w), ks.we(w), ks.wh(w), ks.wn(w)) end
  end
  if plan.skipped > 0 then redis.call('HINCRBY', state, 'windows_skipped', plan.skipped) end
  if plan.upto > plan.from then
    redis.call('ZREMRANGEBYSCORE', ks.open, plan.from, plan.upto - 1)
    redis.call('HSET', state, mark, plan.upto - 1)
  end
  if #plan.windows > 0 then redis.call('HINCRBY', state, 'windows_sealed', #plan.windows) end
  return #plan.windows
end

-- the live stream's windows are frozen at `first` once a window is sealed or live traffic arrived;
-- before that, an earlier replay window moves `first` back
local function frozen(st)
  return st.first ~= nil and (st.sealed ~= nil or st.live ~= nil)
end

local function live_plan(ks, st, upto, extra, max_silent)
  if st.first == nil then return nil end
  return seal_plan(ks, (st.sealed or (st.first - 1)) + 1, upto, max_silent, extra)
end

-- the open history windows (before `first`) to seal: from the oldest to the newest holding data,
-- never past `hint` (exclusive); no silence is made up before or after them
local function history_plan(ks, st, hint, extra, max_silent)
  if not frozen(st) then return nil end
  local lo, hi = st.hsealed and (st.hsealed + 1) or '-inf', st.first - 1
  local minw, maxw = nil, nil
  local a = redis.call('ZRANGEBYSCORE', ks.open, lo, hi, 'LIMIT', 0, 1)
  local b = redis.call('ZREVRANGEBYSCORE', ks.open, hi, lo, 'LIMIT', 0, 1)
  if a[1] then minw, maxw = tonumber(a[1]), tonumber(b[1]) end
  for w in pairs(extra or {}) do
    if minw == nil or w < minw then minw = w end
    if maxw == nil or w > maxw then maxw = w end
  end
  if minw == nil then return nil end
  local upto = math.min(maxw + 1, st.first)
  if hint ~= nil and hint < upto then upto = hint end
  if upto <= minw then return nil end
  return seal_plan(ks, minw, upto, max_silent, extra)
end

-- ---------------------------------------------------------------------------------------------
-- re-configuration: a new config generation reaches a service (ad_configure, or the first call that
-- carries it). Sketch sizes changed → sketches dropped (recreated on the next ingest); window length
-- changed → open history sealed at the old length, open live windows carried into windows of the new
-- length (see the header), bookkeeping converted.
-- ---------------------------------------------------------------------------------------------
local function rewindow_plan(ks, st, Wo, Wn, checks)
  local plan = { Wo = Wo, Wn = Wn, moves = {} }
  local hp = history_plan(ks, st, nil, nil, MAX_SILENT)
  local err = seal_checks(ks, hp, ks.hist(Wo), Wo, checks)
  if err then return nil, err end
  plan.history = hp
  plan.lo = st.sealed and (st.sealed + 1) or st.first
  if st.sealed then
    plan.E = (st.sealed + 1) * Wo             -- end of the last sealed window (seconds)
    plan.F = math.ceil(plan.E / Wn)            -- the first window of the new length starts at or after it
  end
  for _, wo in ipairs(redis.call('ZRANGEBYSCORE', ks.open, plan.lo, '+inf')) do
    wo = tonumber(wo)
    local wn = math.floor(wo * Wo / Wn)
    if plan.F and wn < plan.F then wn = plan.F end
    local stretched = wo * Wo < wn * Wn or (wo + 1) * Wo > (wn + 1) * Wn
    plan.moves[#plan.moves + 1] = { wo = wo, wn = wn, stretched = stretched }
    window_checks(ks, wo, checks)
    window_checks(ks, wn, checks)
    checks[#checks + 1] = { ks.tmp('w', wo), HASH }
    checks[#checks + 1] = { ks.tmp('we', wo), HASH }
    checks[#checks + 1] = { ks.tmp('wh', wo), HLL }
    checks[#checks + 1] = { ks.tmp('wn', wo), SET }
  end
  checks[#checks + 1] = { ks.hist(Wn), STREAM }
  return plan, nil
end

-- add window hash `src` into `dst` (sums add, minima and maxima kept, ranges and marks copied)
local function merge_window_hash(src, dst)
  local flat = redis.call('HGETALL', src)
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local part = string.match(f, '^k:.+:(%a+)$')
    if f == 'ls' or part == 's' then
      redis.call('HINCRBYFLOAT', dst, f, v)
    elseif part == 'mn' or part == 'mx' then
      local cur = tonumber(redis.call('HGET', dst, f))
      local x = tonumber(v)
      if cur == nil or (part == 'mn' and x < cur) or (part == 'mx' and x > cur) then redis.call('HSET', dst, f, v) end
    elseif part == 'lo' or part == 'hi' or f == 'rw' then
      redis.call('HSET', dst, f, v)
    else
      redis.call('HINCRBY', dst, f, v)
    end
  end
end

-- add endpoint counts `src` into `dst`, keeping at most WINDOW_ENDPOINTS_CAP names (the rest as OTHER)
local function merge_endpoints(src, dst)
  local flat = redis.call('HGETALL', src)
  local room = WINDOW_ENDPOINTS_CAP - redis.call('HLEN', dst)
  local other = 0
  for i = 1, #flat, 2 do
    local e, cnt = flat[i], tonumber(flat[i + 1])
    if redis.call('HEXISTS', dst, e) == 1 then
      redis.call('HINCRBY', dst, e, cnt)
    elseif room > 0 then
      redis.call('HSET', dst, e, cnt); room = room - 1
    else
      other = other + cnt
    end
  end
  if other > 0 then redis.call('HINCRBY', dst, OTHER_ENDPOINT, other) end
end

local function rewindow_write(state, ks, st, plan, c)
  local Wo, Wn = plan.Wo, plan.Wn
  seal_write(state, ks, plan.history, ks.hist(Wo), Wo, c.ret, st.sparse == '1', 'hsealed')
  -- old windows to temporary names first, so an old index equal to a new one cannot mix them up
  for _, m in ipairs(plan.moves) do
    for kind, name in pairs({ w = ks.win(m.wo), we = ks.we(m.wo), wh = ks.wh(m.wo), wn = ks.wn(m.wo) }) do
      if redis.call('EXISTS', name) == 1 then redis.call('RENAME', name, ks.tmp(kind, m.wo)) end
    end
  end
  redis.call('ZREMRANGEBYSCORE', ks.open, plan.lo, '+inf')
  if frozen(st) then  -- the new first window is after the change: the time before it stays live-covered
    redis.call('HSET', state, 'lfrom', st.lfrom or st.first * Wo)
  end
  local first_new = nil
  for _, m in ipairs(plan.moves) do
    merge_window_hash(ks.tmp('w', m.wo), ks.win(m.wn))
    if m.stretched then redis.call('HSET', ks.win(m.wn), 'rw', 1) end
    merge_endpoints(ks.tmp('we', m.wo), ks.we(m.wn))
    if redis.call('EXISTS', ks.tmp('wh', m.wo)) == 1 then
      redis.call('PFMERGE', ks.wh(m.wn), ks.tmp('wh', m.wo))
    end
    if redis.call('EXISTS', ks.tmp('wn', m.wo)) == 1 then
      redis.call('SUNIONSTORE', ks.wn(m.wn), ks.wn(m.wn), ks.tmp('wn', m.wo))
    end
    redis.call('DEL', ks.tmp('w', m.wo), ks.tmp('we', m.wo), ks.tmp('wh', m.wo), ks.tmp('wn', m.wo))
    redis.call('ZADD', ks.open, m.wn, m.wn)
    if first_new == nil or m.wn < first_new then first_new = m.wn end
  end
  if plan.F then
    redis.call('HSET', state, 'first', plan.F, 'sealed', plan.F - 1, 'rwf', math.floor(plan.E / Wn), 'rwt', plan.F)
  else
    redis.call('HSET', state, 'first', first_new or math.floor(st.first * Wo / Wn))
    redis.call('HDEL', state, 'sealed', 'rwf', 'rwt')
  end
  if st.clock then redis.call('HSET', state, 'clock', math.floor(st.clock * Wo / Wn)) end
  redis.call('HDEL', state, 'hclock', 'hclock_at')
  local ms = stream_last_id(ks.hist(Wn))
  if ms then redis.call('HSET', state, 'hsealed', ms / (Wn * 1000)) else redis.call('HDEL', state, 'hsealed') end
end

-- bring a service to config `c` (checked first, then written); an error message, or nil
local function configure(state, ks, c, st)
  local checks = {}
  local plan = nil
  if st.W ~= nil and st.W ~= c.W and st.first ~= nil then
    local err
    plan, err = rewindow_plan(ks, st, st.W, c.W, checks)
    if err then return err end
  end
  local drop = st.sk == '1' and not same_sketches(st, c)
  local err = first_error(checks)
  if err then return err end
  if drop then drop_sketches(state, ks, st) end
  if plan then rewindow_write(state, ks, st, plan, c) end
  redis.call('HSET', state, 'g', c.g, 'W', c.W)
  return nil
end

-- ---------------------------------------------------------------------------------------------
-- functions
-- ---------------------------------------------------------------------------------------------
local function ad_version()
  return LIB_VERSION
end

local function service_keys(keys, args, what)
  local state, prefix, service = keys[1], args[1], args[2]
  if type(service) ~= 'string' or not string.match(service, SERVICE_PATTERN) or #service > MAX_SERVICE_NAME then
    return nil, what .. ': service must match [A-Za-z0-9._-]{1,' .. MAX_SERVICE_NAME .. '}'
  end
  if type(prefix) ~= 'string' then return nil, what .. ': prefix must be a string' end
  local ks = keyset(prefix, service)
  if state ~= ks.state then return nil, what .. ': key does not match service' end
  local err = type_error(state, HASH) or type_error(ks.open, ZSET)
  if err then return nil, what .. ': ' .. err end
  return ks, nil
end

-- a call carrying a newer config that changes the service's window length is refused: the change
-- moves windows and bookkeeping, so it is its own call (ad_configure, checked then written), after
-- which the caller sends again (the sink does both)
local function config_step(st, c)
  if not needs_configure(st, c) then return false, false, nil end
  if st.W ~= nil and st.W ~= c.W and st.first ~= nil then
    return true, false, redis.error_reply(NEED_CONFIG .. ' anomalydesk: the service counts in ' .. st.W
      .. '-s windows, this call in ' .. c.W .. '-s ones: bring it to the new config (ad_configure), then send again')
  end
  return true, st.sk == '1' and not same_sketches(st, c), nil
end

local function decode_cfg(raw, what)
  local ok, c = pcall(cjson.decode, raw or '')
  if not ok or type(c) ~= 'table' then return nil, what .. ': cfg is not a JSON object' end
  local err = validate_cfg(c)
  if err then return nil, what .. ': ' .. err end
  return c, nil
end

local function ad_ingest(keys, args)
  local ks, kerr = service_keys(keys, args, 'invalid batch')
  if not ks then return fail(kerr) end
  local state = ks.state
  local ok, p = pcall(cjson.decode, args[3] or '')
  if not ok then return fail('invalid batch: payload is not JSON') end
  local err = validate(p, args[2])
  if err then return fail('invalid batch: ' .. err) end
  local c = p.cfg
  local st = read_state(state)
  local why = stale_reason(st, c)
  if why then return redis.error_reply(STALE .. ' anomalydesk: ' .. why) end
  local batch = (p.batch ~= nil and p.batch ~= cjson.null) and ks.batch(p.batch) or nil
  if batch then
    err = type_error(batch, STRING)
    if err then return fail('cannot ingest: ' .. err) end
    if redis.call('EXISTS', batch) == 1 then
      redis.call('HINCRBY', state, 'batches_duplicate', 1)
      return { 0, 0, 0, 1, 0, 0, 0 }
    end
  end
  -- a new generation without a window-length change is applied with this call's writes: the
  -- sketches, when their sizes changed, are dropped first and made anew with the new sizes
  local apply_cfg, drop, refusal = config_step(st, c)
  if refusal then return refusal end
  if drop then st.sk, st.bf_layers = nil, nil end

  -- where each window goes: the live stream, history, or late
  local live = p.mode == 'live'
  local now_win, now_s = server_window(c.W)
  local is_frozen = frozen(st)
  local function place(win)
    if live and st.rwf and st.sealed and win >= st.rwf and win <= st.sealed and st.sealed < st.rwt then
      return st.rwt, 'live', true  -- between the last sealed window of the old length and the first new one
    end
    if is_frozen and win < st.first then
      if st.hsealed and win <= st.hsealed then return win, 'late' end
      if st.lfrom and (win + 1) * c.W > st.lfrom then return win, 'late' end  -- live at an earlier length
      return win, 'history'
    end
    if st.sealed and win <= st.sealed then return win, 'late' end
    return win, 'live'
  end
  local first = st.first
  local targets, htargets, remapped = {}, {}, {}
  local groups, krows = {}, {}
  local accepted, late, k_accepted, k_late, history_events = 0, 0, 0, 0, 0
  local max_win, max_hwin = nil, nil
  local function take(win, class, moved)
    if class == 'history' then
      htargets[win] = true
      if max_hwin == nil or win > max_hwin then max_hwin = win end
    else
      if not is_frozen and (first == nil or win < first) then first = win end
      targets[win] = true
      if max_win == nil or win > max_win then max_win = win end
    end
    if moved then remapped[win] = true end
  end
  for _, w in ipairs(p.w) do
    local win, class, moved = place(live and now_win or w.win)
    if class == 'late' then
      late = late + w.n
    elseif w.n > 0 then
      take(win, class, moved)
      groups[#groups + 1] = { win, w }
      accepted = accepted + w.n
      if class == 'history' then history_events = history_events + w.n end
    end
  end
  for _, k in ipairs(p.k or {}) do
    local win, class, moved = place(live and now_win or k[1])
    if class == 'late' then
      late = late + k[4]; k_late = k_late + k[4]
    else
      take(win, class, moved)
      krows[#krows + 1] = { win, k }
      accepted = accepted + k[4]; k_accepted = k_accepted + k[4]
      if class == 'history' then history_events = history_events + k[4] end  -- (a backfill's KPIs too)
    end
  end

  -- what sealing will do once this call's windows are written
  local after = { first = first, sealed = st.sealed, live = st.live or (live and '1' or nil),
    hsealed = st.hsealed }
  local clock = nil
  local lp, hp = nil, nil
  if live then
    lp = live_plan(ks, after, now_win, targets, MAX_SILENT)
  elseif max_win ~= nil then
    clock = math.max(st.clock or 0, max_win)
    lp = live_plan(ks, after, clock, targets, MAX_SILENT)
  end
  local hclock = nil
  if max_hwin ~= nil then
    hclock = math.max(st.hclock or 0, max_hwin)
    hp = history_plan(ks, after, hclock, htargets, MAX_SILENT)
  end

  -- every check before the first write
  local checks = {}
  for win in pairs(targets) do window_checks(ks, win, checks) end
  for win in pairs(htargets) do window_checks(ks, win, checks) end
  -- the open live windows history may correct (below, "history landing after live traffic began")
  local corrected = {}
  if max_hwin ~= nil and first ~= nil then
    corrected = redis.call('ZRANGEBYSCORE', ks.open, first, '+inf')
    for _, win in ipairs(corrected) do window_checks(ks, win, checks) end
  end
  if not drop then sketch_checks(ks, c, st, checks) end
  local distinct, seen_ep = 0, {}
  for _, g in ipairs(groups) do
    for i = 1, #g[2].ep, 2 do
      if not seen_ep[g[2].ep[i]] then seen_ep[g[2].ep[i]] = true; distinct = distinct + 1 end
    end
  end
  if c.be ~= 'native' then bloom_growth_checks(state, ks, c, st, distinct, checks) end
  if p.raw ~= nil and #p.raw > 0 then checks[#checks + 1] = { ks.raw, STREAM } end
  if batch then checks[#checks + 1] = { batch, STRING } end
  err = seal_checks(ks, lp, ks.fp, c.W, checks) or seal_checks(ks, hp, ks.hist(c.W), c.W, checks)
    or first_error(checks)
  if err then return fail('cannot ingest: ' .. err) end

  -- writes
  if drop then drop_sketches(state, ks, read_state(state)) end
  if apply_cfg then redis.call('HSET', state, 'g', c.g, 'W', c.W) end
  if not drop then resize_native_topk(state, ks, st) end
  ensure_sketches(state, ks, c)
  if first ~= st.first then redis.call('HSET', state, 'first', first) end
  local cms_ep, cms_st = {}, {}
  local topk_counters = topk_width(c.tk)
  -- the interaction filter: each endpoint of the call checked (and added) once, in order of first
  -- appearance, all in one go (BF.MADD; bloom_add_all); a first sighting is new in the window it first
  -- appears in
  local order, owner = {}, {}
  for gi, g in ipairs(groups) do
    local ep = g[2].ep
    for i = 1, #ep, 2 do
      if owner[ep[i]] == nil then owner[ep[i]] = gi; order[#order + 1] = ep[i] end
    end
  end
  local hf = hash_memo()
  local first_seen = {}
  if #order > 0 then
    if c.be == 'native' then
      for i = 1, #order, 1000 do
        local j = math.min(i + 999, #order)
        local added = redis.call('BF.MADD', ks.bf, unpack(order, i, j))
        for x = 1, j - i + 1 do
          if added[x] == 1 then first_seen[order[i + x - 1]] = true end
        end
      end
    else
      first_seen = bloom_add_all(state, ks.bf, order, bloom_layers(state), hf)
    end
  end
  local new_in, sighted = {}, {}
  for e in pairs(first_seen) do
    new_in[owner[e]] = (new_in[owner[e]] or 0) + 1
    local win = groups[owner[e]][1]
    if live and not htargets[win] then  -- remembered until the window is sealed (below: history landing later)
      sighted[win] = sighted[win] or {}
      sighted[win][#sighted[win] + 1] = e
    end
  end
  for win, names in pairs(sighted) do  -- at most WINDOW_ENDPOINTS_CAP per window: the rest stay new
    local room = WINDOW_ENDPOINTS_CAP - redis.call('SCARD', ks.wn(win))
    if room > 0 then
      if #names > room then names = { unpack(names, 1, room) } end
      call_chunked('SADD', ks.wn(win), names, 1000)
    end
  end
  -- history landing after live traffic began (a backfill) holds endpoints from before the open live
  -- windows: those first sighted in one of them were not new there. A live window sealed before the
  -- history came keeps its count (its fingerprint is out already).
  local hnames = {}
  for e, gi in pairs(owner) do
    if htargets[groups[gi][1]] and not first_seen[e] then hnames[#hnames + 1] = e end
  end
  if #hnames > 0 then
    for _, win in ipairs(corrected) do
      if redis.call('EXISTS', ks.wn(win)) == 1 then
        local removed = 0
        for i = 1, #hnames, 1000 do
          removed = removed + redis.call('SREM', ks.wn(win), unpack(hnames, i, math.min(i + 999, #hnames)))
        end
        if removed > 0 then redis.call('HINCRBY', ks.win(win), 'new', -removed) end
      end
    end
  end
  for gi, g in ipairs(groups) do
    local win, w = g[1], g[2]
    local wk = ks.win(win)
    -- window totals and histogram: one read and one write instead of an HINCRBY per bucket
    local f, inc = { 'n', 'e4', 'e5' }, { w.n, w.e4, w.e5 }
    for i = 1, #w.h, 2 do f[#f + 1] = 'h' .. w.h[i]; inc[#inc + 1] = w.h[i + 1] end
    hash_add(wk, f, inc)
    redis.call('HINCRBYFLOAT', wk, 'ls', num(w.ls))
    -- exact endpoint counts, up to WINDOW_ENDPOINTS_CAP distinct ones, the rest as OTHER_ENDPOINT
    local names, new = {}, new_in[gi] or 0
    for i = 1, #w.ep, 2 do names[#names + 1] = w.ep[i] end
    local wek = ks.we(win)
    local present = redis.call('HMGET', wek, unpack(names))
    local room = WINDOW_ENDPOINTS_CAP - redis.call('HLEN', wek)
    local ef, einc, other = {}, {}, 0
    for i = 1, #w.ep, 2 do
      local e, cnt = w.ep[i], w.ep[i + 1]
      if present[(i + 1) / 2] or room > 0 then
        if not present[(i + 1) / 2] then room = room - 1 end
        ef[#ef + 1] = e; einc[#einc + 1] = cnt
      else
        other = other + cnt
      end
    end
    if other > 0 then ef[#ef + 1] = OTHER_ENDPOINT; einc[#einc + 1] = other end
    hash_add(wek, ef, einc)
    for i = 1, #w.ep, 2 do
      local e = w.ep[i]
      cms_ep[e] = (cms_ep[e] or 0) + w.ep[i + 1]
    end
    if #names > 0 then call_chunked('PFADD', ks.wh(win), names, 1000) end
    if new > 0 then redis.call('HINCRBY', wk, 'new', new) end
    for i = 1, #w.st, 2 do
      local s = tostring(w.st[i])
      cms_st[s] = (cms_st[s] or 0) + w.st[i + 1]
    end
  end
  for _, row in ipairs(krows) do
    local win, k = row[1], row[2]
    local wk, base = ks.win(win), 'k:' .. k[2] .. ':'
    redis.call('HINCRBYFLOAT', wk, base .. 's', num(k[3]))
    redis.call('HINCRBY', wk, base .. 'c', k[4])
    if k[5] > 0 then redis.call('HINCRBY', wk, base .. 'o', k[5]) end
    if type(k[8]) == 'number' and type(k[9]) == 'number' then
      local cur = redis.call('HMGET', wk, base .. 'mn', base .. 'mx')
      local mn, mx = tonumber(cur[1]), tonumber(cur[2])
      redis.call('HSET', wk, base .. 'mn', num((mn and mn < k[8]) and mn or k[8]),
        base .. 'mx', num((mx and mx > k[9]) and mx or k[9]))
    end
    if k[6] ~= nil and k[6] ~= cjson.null and k[7] ~= nil and k[7] ~= cjson.null then
      redis.call('HSET', wk, base .. 'lo', num(k[6]), base .. 'hi', num(k[7]))
    end
  end
  for win in pairs(remapped) do redis.call('HSET', ks.win(win), 'rw', 1) end

  local open_items = {}
  for win in pairs(targets) do open_items[#open_items + 1] = win; open_items[#open_items + 1] = win end
  for win in pairs(htargets) do open_items[#open_items + 1] = win; open_items[#open_items + 1] = win end
  if #open_items > 0 then call_chunked('ZADD', ks.open, open_items, 1000) end

  -- sketches over the whole batch: one update per distinct endpoint / status
  local ep_items, st_items = {}, {}
  for e, cnt in pairs(cms_ep) do ep_items[#ep_items + 1] = e; ep_items[#ep_items + 1] = cnt end
  for s, cnt in pairs(cms_st) do st_items[#st_items + 1] = s; st_items[#st_items + 1] = cnt end
  if #ep_items > 0 then
    if c.be == 'native' then
      call_chunked('CMS.INCRBY', ks.cms_ep, ep_items, 1000)
      call_chunked('TOPK.INCRBY', ks.topk, topk_increments(ep_items), 1000)
    else
      cms_incr(ks.cms_ep, c.cw, c.cd, ep_items, hf)
      topk_update(ks.topk, topk_counters, ep_items, ks.topk_order)
    end
  end
  if #st_items > 0 then
    if c.be == 'native' then
      call_chunked('CMS.INCRBY', ks.cms_st, st_items, 1000)
    else
      cms_incr(ks.cms_st, c.cw, c.cd, st_items, hf)
    end
  end

  -- full-fidelity mode: the sampled raw events
  for _, e in ipairs(p.raw or {}) do
    local ts = (e[4] ~= nil and e[4] ~= cjson.null) and num(e[4]) or ''
    redis.call('XADD', ks.raw, 'MAXLEN', '~', c.rm, '*', 'endpoint', e[1], 'status', e[2],
      'latency_ms', num(e[3]), 'timestamp', ts)
  end

  if p.sparse == 1 then redis.call('HSET', state, 'sparse', '1') end
  redis.call('HINCRBY', state, 'events', accepted)
  if k_accepted > 0 then redis.call('HINCRBY', state, 'kpis', k_accepted) end
  if history_events > 0 then redis.call('HINCRBY', state, 'history_events', history_events) end
  if late > 0 then redis.call('HINCRBY', state, 'late', late) end
  if k_late > 0 then redis.call('HINCRBY', state, 'kpis_late', k_late) end

  -- seal this service's closed windows: by server time live, by the event clock in replay; history
  -- by its own clock
  local sparse = (p.sparse == 1) or st.sparse == '1'
  if live then
    if not st.live then redis.call('HSET', state, 'live', '1') end
    redis.call('HDEL', state, 'clock_at')
  elseif clock ~= nil then
    redis.call('HSET', state, 'clock', clock, 'clock_at', now_s)
  end
  if hclock ~= nil then redis.call('HSET', state, 'hclock', hclock, 'hclock_at', now_s) end
  local sealed_now = seal_write(state, ks, lp, ks.fp, c.W, c.ret, sparse, 'sealed')
  local history_sealed = seal_write(state, ks, hp, ks.hist(c.W), c.W, c.ret, sparse, 'hsealed')
  -- the batch id last: a call that failed before here can be sent again
  if batch then redis.call('SET', batch, '1', 'EX', BATCH_TTL) end
  return { accepted, late, sealed_now, 0, k_accepted, k_late, history_sealed }
end

local function ad_seal(keys, args)
  local ks, kerr = service_keys(keys, args, 'seal')
  if not ks then return fail(kerr) end
  local state = ks.state
  local c, cerr = decode_cfg(args[3], 'seal')
  if not c then return fail(cerr) end
  local now_arg, max_silent, hold = args[4], tonumber(args[5]), tonumber(args[6])
  if not is_int(max_silent, 0, 1000000) or not is_finite(hold) or hold < 0 then
    return fail('seal: max_silent must be an integer in 0..1000000 and hold_s a number >= 0')
  end
  local explicit = nil
  if now_arg ~= nil and now_arg ~= '' then
    explicit = tonumber(now_arg)
    if not is_int(explicit, 0, MAX_EPOCH_S / c.W) then return fail('seal: now_window must be a window index') end
  end
  local st = read_state(state)
  local why = stale_reason(st, c)
  if why then return redis.error_reply(STALE .. ' anomalydesk: ' .. why) end
  if st.first == nil and st.g == nil then return 0 end  -- nothing ever ingested
  local apply_cfg, drop, refusal = config_step(st, c)
  if refusal then return refusal end
  local upto, now_s = server_window(c.W)
  local hint = nil
  if explicit ~= nil then
    upto, hint = explicit, explicit
  else
    if st.clock_at and now_s - st.clock_at <= hold then upto = st.clock end
    if st.hclock_at and now_s - st.hclock_at <= hold then hint = st.hclock end
  end
  local lp = live_plan(ks, st, upto, nil, max_silent)
  local hp = history_plan(ks, st, hint, nil, max_silent)
  local checks = {}
  local err = seal_checks(ks, lp, ks.fp, c.W, checks) or seal_checks(ks, hp, ks.hist(c.W), c.W, checks)
    or first_error(checks)
  if err then return fail('seal: ' .. err) end
  if drop then drop_sketches(state, ks, st) end
  if apply_cfg then redis.call('HSET', state, 'g', c.g, 'W', c.W) end
  local sparse = st.sparse == '1'
  return seal_write(state, ks, lp, ks.fp, c.W, c.ret, sparse, 'sealed')
    + seal_write(state, ks, hp, ks.hist(c.W), c.W, c.ret, sparse, 'hsealed')
end

local function ad_configure(keys, args)
  local ks, kerr = service_keys(keys, args, 'configure')
  if not ks then return fail(kerr) end
  local c, cerr = decode_cfg(args[3], 'configure')
  if not c then return fail(cerr) end
  local st = read_state(ks.state)
  local why = stale_reason(st, c)
  if why then return redis.error_reply(STALE .. ' anomalydesk: ' .. why) end
  if not needs_configure(st, c) then return 0 end
  local err = configure(ks.state, ks, c, st)
  if err then return fail('configure: ' .. err) end
  return 1
end

-- a native structure's INFO reply (name, value, name, value, ...) as a table; RedisBloom sends the
-- names as status replies, which reach Lua as { ok = name }
local function info_table(reply)
  local t = {}
  for i = 1, #reply, 2 do
    local name = type(reply[i]) == 'table' and reply[i]['ok'] or reply[i]
    local value = reply[i + 1]
    t[name] = type(value) == 'table' and value['ok'] or value
  end
  return t
end

-- the filter's and the Top-K's sizes as they are now, from the structures themselves (native) or the
-- layers recorded in the state (functions): what `anomalydesk sketches info` and the app show
local function sketch_info(state, ks, native, k)
  local f = redis.call('HMGET', state, 'fc', 'fe', 'tkw')
  local filter = { initial_capacity = tonumber(f[1]), error = tonumber(f[2]) }
  local topk = { k = k }
  if native then
    local bf = info_table(redis.call('BF.INFO', ks.bf))
    filter.kind = 'bloom'
    filter.capacity = bf['Capacity']; filter.items = bf['Number of items inserted']
    filter.layers = bf['Number of filters']; filter.bytes = bf['Size']
    local tk = info_table(redis.call('TOPK.INFO', ks.topk))
    topk.kind = 'heavykeeper'
    topk.width = tk['width']; topk.depth = tk['depth']; topk.decay = tonumber(tk['decay'])
  else
    filter.kind = 'bloom'
    filter.capacity, filter.items, filter.layers, filter.bytes = 0, 0, 0, 0
    for _, l in ipairs(bloom_layers(state)) do
      filter.layers = filter.layers + 1
      filter.capacity = filter.capacity + l.cap; filter.items = filter.items + l.n
      filter.bytes = filter.bytes + math.ceil(l.m / 8)
    end
    topk.kind = 'space-saving'
    topk.width = tonumber(f[3]) or topk_width(k)
  end
  return { filter = filter, topk = topk }
end

local function ad_query(keys, args)
  local state, prefix, service, what = keys[1], args[1], args[2], args[3]
  local ks = keyset(prefix, service)
  local ok, items = pcall(cjson.decode, args[4] or '[]')
  if not ok or type(items) ~= 'table' then return fail('query: items must be a JSON list') end
  local s = redis.call('HMGET', state, 'sk', 'be', 'cms_w', 'cms_d', 'topk_k')
  if s[1] ~= '1' then return fail('query: no sketches for service ' .. service .. ' (nothing ingested yet)') end
  local native, w, d, k = s[2] == 'native', tonumber(s[3]), tonumber(s[4]), tonumber(s[5])
  local out = {}
  if what == 'endpoint' or what == 'status' then
    local key = what == 'endpoint' and ks.cms_ep or ks.cms_st
    for i, item in ipairs(items) do
      if native then
        out[i] = redis.call('CMS.QUERY', key, tostring(item))[1]
      else
        out[i] = cms_query(key, w, d, tostring(item))
      end
    end
  elseif what == 'interaction' then
    -- BF.EXISTS answers 0 on a key of another type (RedisBloom 2.8): that would read as "never seen"
    local t = native and key_type(ks.bf) or 'none'
    if t ~= 'none' and not NATIVE_TYPES.bf[t] then
      return redis.error_reply('WRONGTYPE anomalydesk: ' .. ks.bf .. ' holds a ' .. t .. ' value, not a Bloom filter')
    end
    local layers = (not native) and bloom_layers(state) or nil
    for i, item in ipairs(items) do
      local found
      if native then found = redis.call('BF.EXISTS', ks.bf, item) == 1 else found = bloom_exists(ks.bf, item, layers) end
      out[i] = found and 1 or 0
    end
  elseif what == 'topk' then
    if native then
      return redis.call('TOPK.LIST', ks.topk, 'WITHCOUNT')
    end
    return redis.call('ZREVRANGE', ks.topk, 0, k - 1, 'WITHSCORES')
  elseif what == 'info' then
    return cjson.encode(sketch_info(state, ks, native, k))
  else
    return fail('query: what must be endpoint, status, interaction, topk or info')
  end
  return out
end


redis.register_function{ function_name = 'ad_version', callback = ad_version, flags = { 'no-writes' } }
redis.register_function{ function_name = 'ad_ingest', callback = ad_ingest }
redis.register_function{ function_name = 'ad_seal', callback = ad_seal }
redis.register_function{ function_name = 'ad_configure', callback = ad_configure }
redis.register_function{ function_name = 'ad_query', callback = ad_query, flags = { 'no-writes' } }
