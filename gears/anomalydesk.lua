#!lua name=anomalydesk
--[[
AnomalyDesk server-side library (Redis Functions, Redis >= 7; the supported successor of RedisGears).

Every function works on ONE service: its keys share the hash tag {service}, so in Redis Cluster one
FCALL touches one slot. The only declared key is the service's state hash; the other keys are built
from the same prefix and tag (same slot). Sizes and the window length come from the caller (read from
the global config hash by the client), so no function touches a global key.

Functions
  ad_version()                                            -> library version
  ad_ingest(state; prefix, service, payload)              -> {accepted, late, sealed, duplicate}
  ad_seal(state; prefix, service, window_s, now_window|'', retention, max_silent, hold_s) -> sealed
  ad_query(state; prefix, service, what, items_json)      -> per item answer (no writes)
  ad_reset(state; prefix, service, windows '0'|'1')       -> keys deleted (sketches recreated lazily)

Ingest payload (JSON, built by anomalydesk.store.sink):
  {"v": 1, "mode": "live"|"replay", "batch": id|null, "sparse": 0|1,
   "cfg": {"W": window_s, "cw": cms_width, "cd": cms_depth, "fc": filter_capacity,
           "fe": filter_error, "tk": topk_k, "ret": retention, "be": "native"|"functions",
           "rm": raw stream length},
   "raw": [[endpoint, status, latency_ms, timestamp|null], ...] (optional, full-fidelity mode),
   "w": [{"win": window (ignored in live mode), "n": requests, "e4": n_4xx, "e5": n_5xx,
          "ls": latency_sum_ms, "h": [bucket, count, ...], "ep": [endpoint, count, ...],
          "st": [status, count, ...]}, ...],
   "k": [[window, name, sum, count, out_of_range, low|null, high|null, min, max], ...]}
  The whole payload is validated before anything is written: an invalid batch returns an error
  naming the offending part and changes nothing.

Sketches (backend "functions": this library's own, in plain Redis strings/sorted sets; "native":
the RedisBloom commands built into Redis 8 / Redis Stack):
  Count-Min Sketch  width w, depth d as BITFIELD u32 counters (saturating); estimate >= truth and
                    <= truth + (e/w)*N with probability >= 1 - e^-d (N = total count added).
  Bloom filter      scalable: layers of m bits, k hashes sized for capacity and error; a full layer
                    gets a successor with twice the capacity and half the error, so it never
                    saturates; overall false-positive rate <= 2 * error.
  Top-K             Space-Saving with 10*k (at least 100) counters in a sorted set: every item with
                    true count > N/counters is listed; counts overestimate by at most N/counters.
  Size limits (cfg, refused with an error naming the field): width <= 1,000,000, depth <= 20,
  width*depth <= 4,000,000 counters, filter capacity <= 10,000,000, filter error >= 1e-9, k <= 1,000.
]]

local LIB_VERSION = '1'
local MAX_BUCKET = 200
local MAX_NAME = 256
local MAX_KPI_NAME = 128
local WINDOW_ENDPOINTS_CAP = 512
local OTHER_ENDPOINT = '(other)'
local TOPK_MIN_COUNTERS = 100
local BATCH_TTL = 600
local MAX_SILENT = 720  -- config.MAX_SILENT_WINDOWS_SEALED
local LAT_MIN_MS = 0.1
local LAT_PER_OCTAVE = 8
-- bounds that keep every later write valid: counts and windows stay integers Redis accepts (Lua
-- prints numbers >= 1e14 in exponent form), sums stay finite when added up, and no list is longer
-- than unpack() can spread (the sink never sends more than 2,000 endpoints in one call)
local MAX_COUNT = 1e12
local MAX_SUM = 1e18
local MAX_PAIRS = 4000
local MAX_EPOCH_S = 1e11
-- sketch sizes a config may choose (config.SKETCH_MAX_*, checked by `setup` before anything is written)
local MAX_CMS_WIDTH = 1000000
local MAX_CMS_DEPTH = 20
local MAX_CMS_COUNTERS = 4000000
local MAX_FILTER_CAPACITY = 10000000
local MIN_FILTER_ERROR = 1e-9
local MAX_TOPK = 1000

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
end

local function status_ok(s)
  if not is_int(s, 100, 599) then return 'status must be an integer in 100..599' end
end

local function validate(p, service)
  if type(p) ~= 'table' then return 'payload must be a JSON object' end
  if p.v ~= 1 then return 'payload version must be 1' end
  if p.mode ~= 'live' and p.mode ~= 'replay' then return 'mode must be "live" or "replay"' end
  if p.batch ~= nil and p.batch ~= cjson.null and (type(p.batch) ~= 'string' or #p.batch > 128) then
    return 'batch must be a string of at most 128 characters'
  end
  local c = p.cfg
  if type(c) ~= 'table' then return 'cfg is required' end
  if not is_int(c.W, 1, 86400) then return 'cfg.W must be an integer number of seconds' end
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
local function cms_offsets(item, width, depth)
  local h1, h2 = hashes(item)
  h2 = h2 % (width - 1 > 0 and width - 1 or 1) + 1
  local offs = {}
  for i = 0, depth - 1 do
    offs[#offs + 1] = i * width + (h1 + i * h2) % width
  end
  return offs
end

local function cms_incr(key, width, depth, items)
  -- items: {name, count, name, count, ...}; one BITFIELD call per item (all rows)
  for i = 1, #items, 2 do
    local args = { key, 'OVERFLOW', 'SAT' }
    for _, off in ipairs(cms_offsets(tostring(items[i]), width, depth)) do
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

local function bloom_positions(item, m, k)
  local _, _, h3, h4 = hashes(item)
  h4 = h4 % (m - 1) + 1
  local pos = {}
  for i = 0, k - 1 do pos[#pos + 1] = (h3 + i * h4) % m end
  return pos
end

local function bloom_layer_has(key, m, k, item)
  local args = { key }
  for _, p in ipairs(bloom_positions(item, m, k)) do
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

-- returns true when item was not in the filter (a first sighting); `layers` is bloom_layers(state),
-- loaded once per call and kept in step here
local function bloom_add(state, base, item, layers)
  for i, l in ipairs(layers) do
    if bloom_layer_has(base .. ':' .. i, l.m, l.k, item) then return false end
  end
  local last = #layers
  local l = layers[last]
  if l.n >= l.cap then
    local err = tonumber(redis.call('HGET', state, 'bf_err' .. last)) / 2
    last = bloom_add_layer(state, l.cap * 2, err)
    local f = redis.call('HMGET', state, 'bf_m' .. last, 'bf_k' .. last, 'bf_cap' .. last)
    l = { m = tonumber(f[1]), k = tonumber(f[2]), cap = tonumber(f[3]), n = 0 }
    layers[last] = l
  end
  local args = { base .. ':' .. last }
  for _, p in ipairs(bloom_positions(item, l.m, l.k)) do
    args[#args + 1] = 'SET'; args[#args + 1] = 'u1'; args[#args + 1] = p; args[#args + 1] = 1
  end
  redis.call('BITFIELD', unpack(args))
  redis.call('HINCRBY', state, 'bf_n' .. last, 1)
  l.n = l.n + 1
  return true
end

local function topk_incr(key, counters, item, count)
  if redis.call('ZSCORE', key, item) then
    redis.call('ZINCRBY', key, count, item)
  elseif redis.call('ZCARD', key) < counters then
    redis.call('ZADD', key, count, item)
  else
    local min = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    redis.call('ZREM', key, min[1])
    redis.call('ZADD', key, tonumber(min[2]) + count, item)
  end
end

-- ---------------------------------------------------------------------------------------------
-- per-service keys and lazy sketch creation
-- ---------------------------------------------------------------------------------------------
local function keyset(prefix, service)
  local t = prefix .. '{' .. service .. '}'
  return {
    tag = t, fp = t .. ':fp', cms_ep = t .. ':cms:ep', cms_st = t .. ':cms:st', bf = t .. ':bf',
    topk = t .. ':topk', open = t .. ':open',
    win = function(w) return t .. ':w:' .. w end,
    we = function(w) return t .. ':we:' .. w end,
    wh = function(w) return t .. ':wh:' .. w end,
  }
end

local function ensure_sketches(state, ks, c)
  if redis.call('HGET', state, 'sk') == '1' then return end
  if c.be == 'native' then
    redis.call('CMS.INITBYDIM', ks.cms_ep, c.cw, c.cd)
    redis.call('CMS.INITBYDIM', ks.cms_st, c.cw, c.cd)
    redis.call('BF.RESERVE', ks.bf, num(c.fe), c.fc, 'EXPANSION', 2)
    redis.call('TOPK.RESERVE', ks.topk, c.tk, 8, 7, '0.9')
  else
    bloom_add_layer(state, c.fc, c.fe)
  end
  redis.call('HSET', state, 'sk', '1', 'be', c.be, 'cms_w', c.cw, 'cms_d', c.cd, 'topk_k', c.tk,
    'fc', c.fc, 'fe', num(c.fe))
end

-- ---------------------------------------------------------------------------------------------
-- sealing: closed windows → fingerprints (exactly once: the state's `sealed` watermark and the
-- stream id, both moved inside this atomic function)
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

local function fingerprint(ks, w, sparse)
  local flat = redis.call('HGETALL', ks.win(w))
  local a = {}
  for i = 1, #flat, 2 do a[flat[i]] = flat[i + 1] end
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
  local top, entropy = 0, 0
  if n > 0 then
    local counts = redis.call('HVALS', ks.we(w))
    for _, c in ipairs(counts) do
      local p = tonumber(c) / n
      if p > 0 then entropy = entropy - p * math.log(p) / math.log(2) end
      if p > top then top = p end
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
  local no_data = (sparse and n == 0 and next(kpi) == nil) and '1' or '0'
  local fields = {
    'requests', n,
    'rate_4xx', n > 0 and num(tonumber(a.e4 or '0') / n) or 0,
    'rate_5xx', n > 0 and num(tonumber(a.e5 or '0') / n) or 0,
    'latency_p50_ms', num(q[1]), 'latency_p95_ms', num(q[2]), 'latency_p99_ms', num(q[3]),
    'latency_mean_ms', n > 0 and num(tonumber(a.ls or '0') / n) or 0,
    'endpoints_distinct', n > 0 and redis.call('PFCOUNT', ks.wh(w)) or 0,
    'new_interactions', tonumber(a.new or '0'),
    'top_endpoint_share', num(top),
    'endpoint_entropy', num(entropy),
    'kpi_level', level_n > 0 and num(level_sum / level_n) or 0,
    'kpi_out_of_range', out_of_range,
    'no_data', no_data,
    'kpis', next(kpis) and cjson.encode(kpis) or '',
    'kpi_ranges', next(ranges) and cjson.encode(ranges) or '',
  }
  redis.call('DEL', ks.win(w), ks.we(w), ks.wh(w))
  return fields
end

local function server_window(W)
  local t = redis.call('TIME')
  return math.floor((tonumber(t[1]) + tonumber(t[2]) / 1e6) / W), tonumber(t[1])
end

-- seal every window < upto that is not sealed yet; returns the number sealed
local function seal_upto(state, ks, W, upto, retention, max_silent)
  local st = redis.call('HMGET', state, 'first', 'sealed', 'sparse')
  if not st[1] then return 0 end
  local sealed = tonumber(st[2] or (tonumber(st[1]) - 1))
  local from = sealed + 1
  if upto <= from then return 0 end
  -- windows holding data (listed in ks.open) are all sealed, however far apart; a silent run longer
  -- than max_silent seals only its last max_silent windows. So the work is the windows with data plus
  -- at most max_silent per silence, never the length of the gap (a backfill from years ago would
  -- otherwise loop over millions of windows with the server blocked, or drop the data it skipped).
  local data, seen = {}, {}
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', ks.open, from, upto - 1)) do
    w = tonumber(w); data[#data + 1] = w; seen[w] = true
  end
  for w = from, math.min(upto - 1, from + max_silent) do  -- windows opened before ks.open existed
    if not seen[w] and redis.call('EXISTS', ks.win(w)) == 1 then data[#data + 1] = w; seen[w] = true end
  end
  table.sort(data)
  data[#data + 1] = upto  -- sentinel: the silence after the last window with data
  local count, skipped, cursor = 0, 0, from
  local sparse = st[3] == '1'
  for _, d in ipairs(data) do
    local run_from = cursor
    if d - cursor > max_silent then
      skipped = skipped + (d - max_silent - cursor)
      run_from = d - max_silent
    end
    for w = run_from, math.min(d, upto - 1) do
      local fields = fingerprint(ks, w, sparse)
      redis.call('XADD', ks.fp, 'MAXLEN', '~', retention, (w * W * 1000) .. '-1',
        'window', w, 'start', w * W, 'schema', 1, unpack(fields))
      count = count + 1
    end
    cursor = d + 1
  end
  if skipped > 0 then redis.call('HINCRBY', state, 'windows_skipped', skipped) end
  redis.call('ZREMRANGEBYSCORE', ks.open, '-inf', upto - 1)
  redis.call('HSET', state, 'sealed', upto - 1)
  if count > 0 then redis.call('HINCRBY', state, 'windows_sealed', count) end
  return count
end

-- ---------------------------------------------------------------------------------------------
-- functions
-- ---------------------------------------------------------------------------------------------
local function ad_version()
  return LIB_VERSION
end

-- the first window a service has data for; it may move earlier only while nothing is sealed
local function note_first(state, first, sealed, win)
  if not first or (sealed == nil and win < tonumber(first)) then
    redis.call('HSET', state, 'first', win)
    return tostring(win)
  end
  return first
end

local function ad_ingest(keys, args)
  local state, prefix, service = keys[1], args[1], args[2]
  if type(service) ~= 'string' or not string.match(service, '^[A-Za-z0-9._-]+$') or #service > 64 then
    return fail('invalid batch: service must match [A-Za-z0-9._-]{1,64}')
  end
  local ks = keyset(prefix, service)
  if state ~= ks.tag .. ':state' then return fail('invalid batch: key does not match service') end
  local ok, p = pcall(cjson.decode, args[3] or '')
  if not ok then return fail('invalid batch: payload is not JSON') end
  local err = validate(p, service)
  if err then return fail('invalid batch: ' .. err) end
  local c = p.cfg

  if p.batch ~= nil and p.batch ~= cjson.null then
    if not redis.call('SET', ks.tag .. ':batch:' .. p.batch, '1', 'NX', 'EX', BATCH_TTL) then
      redis.call('HINCRBY', state, 'batches_duplicate', 1)
      return { 0, 0, 0, 1 }
    end
  end
  ensure_sketches(state, ks, c)

  local now_win, now_s = server_window(c.W)
  local st = redis.call('HMGET', state, 'first', 'sealed')
  local sealed = st[2] and tonumber(st[2]) or nil
  local accepted, late, new_total = 0, 0, 0
  local max_win = nil
  local late_windows = {}
  local cms_ep, cms_st = {}, {}
  local topk_counters = math.max(TOPK_MIN_COUNTERS, 10 * c.tk)
  local checked, layers = {}, nil
  local opened = {}  -- windows this call writes to, listed in ks.open until sealed

  for _, w in ipairs(p.w) do
    local win = (p.mode == 'live') and now_win or w.win
    if sealed ~= nil and win <= sealed then
      late = late + w.n
      late_windows[win] = true
    elseif w.n > 0 then
      st[1] = note_first(state, st[1], sealed, win)
      opened[win] = true
      if max_win == nil or win > max_win then max_win = win end
      local wk = ks.win(win)
      -- window totals and histogram: one read and one write instead of an HINCRBY per bucket
      local f, inc = { 'n', 'e4', 'e5' }, { w.n, w.e4, w.e5 }
      for i = 1, #w.h, 2 do f[#f + 1] = 'h' .. w.h[i]; inc[#inc + 1] = w.h[i + 1] end
      hash_add(wk, f, inc)
      redis.call('HINCRBYFLOAT', wk, 'ls', num(w.ls))
      -- exact endpoint counts, up to WINDOW_ENDPOINTS_CAP distinct ones, the rest as OTHER_ENDPOINT
      local names, new = {}, 0
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
        local e, cnt = w.ep[i], w.ep[i + 1]
        cms_ep[e] = (cms_ep[e] or 0) + cnt
        -- an endpoint already checked in this call is in the filter now: one check per call
        if not checked[e] then
          checked[e] = true
          local first_seen
          if c.be == 'native' then
            first_seen = redis.call('BF.ADD', ks.bf, e) == 1
          else
            layers = layers or bloom_layers(state)
            first_seen = bloom_add(state, ks.bf, e, layers)
          end
          if first_seen then new = new + 1 end
        end
      end
      if #names > 0 then call_chunked('PFADD', ks.wh(win), names, 1000) end
      if new > 0 then redis.call('HINCRBY', wk, 'new', new) end
      new_total = new_total + new
      for i = 1, #w.st, 2 do
        local s = tostring(w.st[i])
        cms_st[s] = (cms_st[s] or 0) + w.st[i + 1]
      end
      accepted = accepted + w.n
    end
  end
  for _, k in ipairs(p.k or {}) do
    local win = (p.mode == 'live') and now_win or k[1]
    if sealed ~= nil and win <= sealed then
      late = late + k[4]
    else
      st[1] = note_first(state, st[1], sealed, win)
      opened[win] = true
      if max_win == nil or win > max_win then max_win = win end
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
      accepted = accepted + k[4]
    end
  end

  local open_items = {}
  for win in pairs(opened) do open_items[#open_items + 1] = win; open_items[#open_items + 1] = win end
  if #open_items > 0 then call_chunked('ZADD', ks.open, open_items, 1000) end

  -- sketches over the whole batch: one update per distinct endpoint / status
  local ep_items, st_items = {}, {}
  for e, cnt in pairs(cms_ep) do ep_items[#ep_items + 1] = e; ep_items[#ep_items + 1] = cnt end
  for s, cnt in pairs(cms_st) do st_items[#st_items + 1] = s; st_items[#st_items + 1] = cnt end
  if #ep_items > 0 then
    if c.be == 'native' then
      call_chunked('CMS.INCRBY', ks.cms_ep, ep_items, 1000)
      call_chunked('TOPK.INCRBY', ks.topk, ep_items, 1000)
    else
      cms_incr(ks.cms_ep, c.cw, c.cd, ep_items)
      for i = 1, #ep_items, 2 do topk_incr(ks.topk, topk_counters, ep_items[i], ep_items[i + 1]) end
    end
  end
  if #st_items > 0 then
    if c.be == 'native' then
      call_chunked('CMS.INCRBY', ks.cms_st, st_items, 1000)
    else
      cms_incr(ks.cms_st, c.cw, c.cd, st_items)
    end
  end

  -- full-fidelity mode: the sampled raw events, after the batch-id check so a retry adds none twice
  for _, e in ipairs(p.raw or {}) do
    local ts = (e[4] ~= nil and e[4] ~= cjson.null) and num(e[4]) or ''
    redis.call('XADD', ks.tag .. ':raw', 'MAXLEN', '~', c.rm, '*', 'endpoint', e[1], 'status', e[2],
      'latency_ms', num(e[3]), 'timestamp', ts)
  end

  if p.sparse == 1 then redis.call('HSET', state, 'sparse', '1') end
  redis.call('HINCRBY', state, 'events', accepted)
  if late > 0 then redis.call('HINCRBY', state, 'late', late) end

  -- seal this service's closed windows: by server time live, by the event clock in replay
  local sealed_now = 0
  if p.mode == 'replay' then
    if max_win ~= nil then
      local clock = tonumber(redis.call('HGET', state, 'clock') or '0')
      if max_win > clock then clock = max_win end
      redis.call('HSET', state, 'clock', clock, 'clock_at', now_s)
      sealed_now = seal_upto(state, ks, c.W, clock, c.ret, MAX_SILENT)
    end
  else
    redis.call('HDEL', state, 'clock_at')
    sealed_now = seal_upto(state, ks, c.W, now_win, c.ret, MAX_SILENT)
  end
  return { accepted, late, sealed_now, 0 }
end

local function ad_seal(keys, args)
  local state, prefix, service = keys[1], args[1], args[2]
  local W, now_arg = tonumber(args[3]), args[4]
  local retention, max_silent, hold = tonumber(args[5]), tonumber(args[6]), tonumber(args[7])
  if not W or W < 1 or not retention or not max_silent or not hold then
    return fail('seal: window_s, retention, max_silent and hold_s must be numbers')
  end
  local ks = keyset(prefix, service)
  if state ~= ks.tag .. ':state' then return fail('seal: key does not match service') end
  local upto, now_s = server_window(W)
  if now_arg ~= nil and now_arg ~= '' then
    upto = tonumber(now_arg)
    if not upto then return fail('seal: now_window must be an integer') end
  else
    local r = redis.call('HMGET', state, 'clock', 'clock_at')
    if r[2] and now_s - tonumber(r[2]) <= hold then upto = tonumber(r[1]) end
  end
  return seal_upto(state, ks, W, upto, retention, max_silent)
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
  else
    return fail('query: what must be endpoint, status, interaction or topk')
  end
  return out
end

-- drop a service's sketches (recreated with the current sizes on its next ingest); with
-- args[3] == '1' also its open windows and window bookkeeping (the window length changed)
local function ad_reset(keys, args)
  local state, prefix, service = keys[1], args[1], args[2]
  local ks = keyset(prefix, service)
  if state ~= ks.tag .. ':state' then return fail('reset: key does not match service') end
  local n = redis.call('DEL', ks.cms_ep, ks.cms_st, ks.bf, ks.topk)
  local layers = tonumber(redis.call('HGET', state, 'bf_layers') or '0')
  for i = 1, layers do
    n = n + redis.call('DEL', ks.bf .. ':' .. i)
    redis.call('HDEL', state, 'bf_m' .. i, 'bf_k' .. i, 'bf_cap' .. i, 'bf_n' .. i, 'bf_err' .. i)
  end
  redis.call('HDEL', state, 'sk', 'bf_layers', 'be', 'cms_w', 'cms_d', 'topk_k', 'fc', 'fe')
  if args[3] == '1' then
    local st = redis.call('HMGET', state, 'first', 'sealed', 'clock')
    if st[1] then
      local from = tonumber(st[2] or (tonumber(st[1]) - 1)) + 1
      for _, w in ipairs(redis.call('ZRANGEBYSCORE', ks.open, from, '+inf')) do
        n = n + redis.call('DEL', ks.win(w), ks.we(w), ks.wh(w))
      end
      for w = from, from + 2 * MAX_SILENT do  -- windows opened before ks.open existed
        n = n + redis.call('DEL', ks.win(w), ks.we(w), ks.wh(w))
      end
    end
    redis.call('DEL', ks.open)
    redis.call('HDEL', state, 'first', 'sealed', 'clock', 'clock_at')
  end
  return n
end

redis.register_function{ function_name = 'ad_version', callback = ad_version, flags = { 'no-writes' } }
redis.register_function{ function_name = 'ad_ingest', callback = ad_ingest }
redis.register_function{ function_name = 'ad_seal', callback = ad_seal }
redis.register_function{ function_name = 'ad_query', callback = ad_query, flags = { 'no-writes' } }
redis.register_function{ function_name = 'ad_reset', callback = ad_reset }
