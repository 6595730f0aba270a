//! The Lua scripts of the Redis store: every write that must be atomic across nodes is one
//! script, run by Redis as one step.
//!
//! Lane scripts get the same 15 keys (`KEYS[1..15]`, see `Lane::keys` in `redis.rs`):
//! next ticket, serving, sessions (sorted set ticket → last seen ms), owners (hash ticket →
//! owner), claimed (bitmap), batches (sorted set of batch starts), batch data (hash
//! `a:b` end, `a:l` places left, `a:d` deadline), places held (`pend`), late line (sorted set
//! ticket → arrival order), late visits (sorted set ticket → last seen ms), late sequence, the
//! leader lease, the epoch and the epoch's birth (ms), and the sessions released lately
//! (sorted set ticket → ms).
//!
//! and `ARGV[1]`, `ARGV[2]` = the highest next ticket and serving counter this node has seen
//! (the floors: a Redis that comes back empty or behind is raised to them, so counters never go
//! backwards), `ARGV[3]` = the epoch this node knows (write scripts refuse, `-3`, if Redis was
//! emptied since or its new epoch is younger than the grace, during which every live node's
//! sync raises the counters to its floors: no ticket number is handed out twice). Script
//! arguments start at `ARGV[4]`.

/// Shared by every lane script.
const PRELUDE: &str = r#"
local function S(x) return string.format('%d', x) end
local function num(v, d) if v then return tonumber(v) end return d end
local function reseed()
  local fnx, fsv = tonumber(ARGV[1]), tonumber(ARGV[2])
  local n0 = num(redis.call('GET', KEYS[1]), 1)
  local s = num(redis.call('GET', KEYS[2]), 1)
  if fsv > s then s = fsv; redis.call('SET', KEYS[2], S(s)) end
  local n = n0
  if fnx > n then n = fnx end
  if s > n then n = s end
  if n ~= n0 then redis.call('SET', KEYS[1], S(n)) end
  return n, s
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fenced()
  local e = redis.call('GET', KEYS[13])
  if e ~= ARGV[3] then return true end
  return now_ms() - num(redis.call('GET', KEYS[14]), 0) < GRACE_MS
end
local function pend() return math.max(0, num(redis.call('GET', KEYS[8]), 0)) end
local function occupied() return redis.call('ZCARD', KEYS[3]) + pend() end
local function bit(t) return t % 4294967296 end
local function counts(r)
  r[#r + 1] = redis.call('ZCARD', KEYS[3])
  r[#r + 1] = pend()
  r[#r + 1] = redis.call('ZCARD', KEYS[9])
  return r
end
-- The mirror's read, appended to `out`: next, serving, sessions, places held, late line, the
-- first LATE_HEAD of the late line (their count, then the tickets), then start and end of each
-- batch with places left.
local function mirror(out, n, s)
  out[#out + 1] = n
  out[#out + 1] = s
  out[#out + 1] = redis.call('ZCARD', KEYS[3])
  out[#out + 1] = pend()
  out[#out + 1] = redis.call('ZCARD', KEYS[9])
  local head = redis.call('ZRANGE', KEYS[9], 0, LATE_HEAD - 1)
  out[#out + 1] = #head
  for _, t in ipairs(head) do out[#out + 1] = tonumber(t) end
  for _, a in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
    local l = num(redis.call('HGET', KEYS[7], a .. ':l'), 0)
    if l > 0 then
      out[#out + 1] = tonumber(a)
      out[#out + 1] = num(redis.call('HGET', KEYS[7], a .. ':b'), 0)
    end
  end
  return out
end
local function late_arrive(ts, now)
  -- Inside already (claimed on another node): not late. -1.
  if redis.call('ZSCORE', KEYS[3], ts) then return -1 end
  local r = redis.call('ZRANK', KEYS[9], ts)
  if r then redis.call('ZADD', KEYS[10], now, ts); return r end
  local len = redis.call('ZCARD', KEYS[9])
  if len < LATE_MAX then
    local seq = redis.call('INCR', KEYS[11])
    redis.call('ZADD', KEYS[9], seq, ts)
    redis.call('ZADD', KEYS[10], now, ts)
  end
  return len
end
local function late_expire(idle_before)
  -- Only those not seen since (a sorted set by last visit: no scan of the whole line).
  local idle = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', '(' .. S(idle_before))
  for _, t in ipairs(idle) do
    redis.call('ZREM', KEYS[9], t); redis.call('ZREM', KEYS[10], t)
  end
  return #idle
end
"#;

/// The script text: the prelude with its constants, then `body`.
pub(super) fn lane(body: &str, grace_ms: u64) -> String {
    format!("{PRELUDE}\n{body}")
        .replace("GRACE_MS", &grace_ms.to_string())
        .replace("LATE_MAX", &crate::waitroom::late::LATE_MAX.to_string())
        .replace("LATE_HEAD", &super::redis::LATE_HEAD.to_string())
        .replace(
            "OUTAGE_MIN",
            &crate::waitroom::store::OUTAGE_MIN.to_string(),
        )
}

/// Hands out the next ticket below `ARGV[4]`: {ticket or -1, next, serving}.
pub(super) const TAKE: &str = r#"
if fenced() then return {-3, 0, 0} end
local n, s = reseed()
if n >= tonumber(ARGV[4]) then return {-1, n, s} end
redis.call('SET', KEYS[1], S(n + 1))
return {n, n + 1, s}
"#;

/// Compare-and-set of serving from `ARGV[4]` to `ARGV[5]` (never past next):
/// {1 or 0, next, serving}.
pub(super) const CAS: &str = r#"
if fenced() then return {-3, 0, 0} end
local n, s = reseed()
local from, to = tonumber(ARGV[4]), tonumber(ARGV[5])
if s ~= from or to < from or to > n then return {0, n, s} end
redis.call('SET', KEYS[2], S(to))
return {1, n, to}
"#;

/// The leader (`ARGV[4]`) admits up to `ARGV[5]` tickets from serving `ARGV[6]` while
/// everyone inside and every place held stay within `ARGV[7]`, holding their places until
/// `ARGV[8]`: {admitted or -1 (serving moved) or -2 (not the leader), next, serving}, and
/// after an admission the mirror's read (`mirror`, from next on): the leader needs no read of
/// its own after it.
pub(super) const ADMIT: &str = r#"
if fenced() then return {-3, 0, 0} end
local n, s = reseed()
if redis.call('GET', KEYS[12]) ~= ARGV[4] then return {-2, n, s} end
if s ~= tonumber(ARGV[6]) then return {-1, n, s} end
local k = math.min(tonumber(ARGV[5]), tonumber(ARGV[7]) - occupied(), n - s)
if k <= 0 then return {0, n, s} end
local a = S(s)
redis.call('SET', KEYS[2], S(s + k))
redis.call('ZADD', KEYS[6], a, a)
redis.call('HSET', KEYS[7], a .. ':b', S(s + k), a .. ':l', S(k), a .. ':d', ARGV[8])
redis.call('INCRBY', KEYS[8], S(k))
-- Every node's mirror takes the batch at once (`Fleet`'s subscriber), not at its next sync.
-- The last word: Redis's clock, for the nodes' push lag.
redis.call('PUBLISH', KEYS[2], string.format('a %s %d %d %d %d %d', ARGV[4], n, s, s + k, pend(), now_ms()))
return mirror({k}, n, s + k)
"#;

/// A new arrival when nobody waits and everyone inside stays within `ARGV[4]`: the next ticket
/// taken, admitted, and its session opened for owner `ARGV[5]` at `ARGV[6]`:
/// {ticket or -1, next, serving}.
pub(super) const ADMIT_NOW: &str = r#"
if fenced() then return {-3, 0, 0} end
local n, s = reseed()
if s ~= n or occupied() >= tonumber(ARGV[4]) then return {-1, n, s} end
local t = S(n)
redis.call('SET', KEYS[1], S(n + 1))
redis.call('SET', KEYS[2], S(n + 1))
redis.call('ZADD', KEYS[3], ARGV[6], t)
redis.call('HSET', KEYS[4], t, ARGV[5])
redis.call('SETBIT', KEYS[5], bit(n), 1)
return {n, n + 1, n + 1}
"#;

/// First claim of ticket `ARGV[4]` by owner `ARGV[5]`, capacity `ARGV[6]`, at `ARGV[7]`:
/// {0 placed | 1 not admitted | 2 bound elsewhere | 3 used | 4 late, next, serving, ahead,
/// then the mirror's sessions, places held, late line}.
pub(super) const CLAIM: &str = r#"
if fenced() then return {-3, 0, 0, 0} end
local n, s = reseed()
local ts = ARGV[4]
local t = tonumber(ts)
if t >= s then return counts({1, n, s, 0}) end
local ow = redis.call('HGET', KEYS[4], ts)
if ow and ow ~= ARGV[5] then return counts({2, n, s, 0}) end
if redis.call('ZSCORE', KEYS[3], ts) then
  redis.call('ZADD', KEYS[3], 'GT', ARGV[7], ts)
  return counts({0, n, s, 0})
end
if redis.call('GETBIT', KEYS[5], bit(t)) == 1 then return counts({3, n, s, 0}) end
local placed = false
local a = redis.call('ZREVRANGEBYSCORE', KEYS[6], ts, '-inf', 'LIMIT', 0, 1)[1]
if a then
  local b = num(redis.call('HGET', KEYS[7], a .. ':b'), 0)
  local l = num(redis.call('HGET', KEYS[7], a .. ':l'), 0)
  if t < b and l > 0 then
    redis.call('HINCRBY', KEYS[7], a .. ':l', -1)
    redis.call('SET', KEYS[8], S(math.max(0, pend() - 1)))
    placed = true
  end
end
if not placed and occupied() < tonumber(ARGV[6]) then placed = true end
if not placed then return counts({4, n, s, late_arrive(ts, ARGV[7])}) end
redis.call('ZADD', KEYS[3], ARGV[7], ts)
redis.call('HSET', KEYS[4], ts, ARGV[5])
redis.call('SETBIT', KEYS[5], bit(t), 1)
redis.call('ZREM', KEYS[9], ts)
redis.call('ZREM', KEYS[10], ts)
return counts({0, n, s, 0})
"#;

/// Ends ticket `ARGV[4]`'s session (at `ARGV[5]`, by node `ARGV[6]`): {1 if it was inside, then the mirror's
/// sessions, places held, late line}.
pub(super) const RELEASE: &str = r#"
-- Remembered for a session's length, so that a node re-reporting the sessions it knows after
-- Redis lost its data does not bring this one back.
redis.call('ZADD', KEYS[15], ARGV[5], ARGV[4])
-- Claimed for good (an admitted ticket): a release sent again after a data loss marks it
-- used, so a copy of its ticket is not placed again.
local t = tonumber(ARGV[4])
if t and t < num(redis.call('GET', KEYS[2]), 1) then redis.call('SETBIT', KEYS[5], bit(t), 1) end
if redis.call('ZREM', KEYS[3], ARGV[4]) == 1 then
  redis.call('HDEL', KEYS[4], ARGV[4])
  -- A place is free: the leader lets the next in at once (`Fleet`'s subscriber), as a single
  -- node does, instead of at its next tick. `ARGV[6]`: the releasing node.
  redis.call('PUBLISH', KEYS[2], string.format('r %s %d', ARGV[6] or '-', now_ms()))
  return counts({1})
end
return counts({0})
"#;

/// At `ARGV[4]`: ends sessions not seen for `ARGV[5]` ms, gives back places held past their
/// deadline, drops late arrivals not seen for `ARGV[6]` ms: {ended, next, serving, abandoned}.
pub(super) const EXPIRE: &str = r#"
local n, s = reseed()
local now = tonumber(ARGV[4])
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. S(now - tonumber(ARGV[5])))
for _, m in ipairs(old) do redis.call('ZREM', KEYS[3], m); redis.call('HDEL', KEYS[4], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[15], '-inf', '(' .. S(now - tonumber(ARGV[5])))
local abandoned = 0
for _, a in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  local l = num(redis.call('HGET', KEYS[7], a .. ':l'), 0)
  local d = num(redis.call('HGET', KEYS[7], a .. ':d'), 0)
  if d <= now or l <= 0 then
    abandoned = abandoned + math.max(l, 0)
    redis.call('HDEL', KEYS[7], a .. ':b', a .. ':l', a .. ':d')
    redis.call('ZREM', KEYS[6], a)
  end
end
if abandoned > 0 then redis.call('SET', KEYS[8], S(math.max(0, pend() - abandoned))) end
late_expire(now - tonumber(ARGV[6]))
return {#old, n, s, abandoned}
"#;

/// Sessions `ARGV[6..]` were active at `ARGV[4]`: their last-seen time moves up. With
/// `ARGV[5]` = 1 (the store lost its data) the arguments are pairs (ticket, owner) and the
/// missing ones are taken back in with their owner and their ticket marked claimed (so a
/// copied ticket is refused as bound elsewhere, not placed again), unless released lately;
/// numbers of people let in during an outage (`open-local`) are taken in too; otherwise they
/// are returned (as strings): their session has ended. With `ARGV[5]` = 2 nothing is written:
/// the sessions that have ended are returned. `{'-3'}` while the node's epoch is not Redis's
/// or (modes 0 and 2) during the resync grace: nothing written, report again.
pub(super) const TOUCH: &str = r#"
-- Not while this node does not know Redis's epoch (Redis lost its data and this node has not
-- seen it yet), nor, except for the re-report itself, during the resync grace: a session
-- missing then may be one another node has yet to re-report, not one that ended. {'-3'}:
-- report again later.
if redis.call('GET', KEYS[13]) ~= ARGV[3] or (ARGV[5] ~= '1' and fenced()) then
  return {'-3'}
end
local gone = {}
local step = 1
if ARGV[5] == '1' then step = 2 end
for i = 6, #ARGV, step do
  local ts = ARGV[i]
  local ow = nil
  if step == 2 then ow = ARGV[i + 1] end
  if ARGV[5] == '2' then
    -- Only asked whether the session is still on.
    if not redis.call('ZSCORE', KEYS[3], ts) then gone[#gone + 1] = ts end
  elseif redis.call('ZSCORE', KEYS[3], ts) then
    redis.call('ZADD', KEYS[3], 'GT', ARGV[4], ts)
    if ow and ow ~= '0' then redis.call('HSETNX', KEYS[4], ts, ow) end
  elseif (ARGV[5] == '1' or tonumber(ts) >= OUTAGE_MIN)
      and not redis.call('ZSCORE', KEYS[15], ts) then
    -- Taken back in: Redis lost its data, or a person let in by a node while Redis did not
    -- answer (fail_mode open-local: their numbers are above OUTAGE_MIN).
    redis.call('ZADD', KEYS[3], ARGV[4], ts)
    if ow and ow ~= '0' then redis.call('HSET', KEYS[4], ts, ow) end
    if tonumber(ts) < OUTAGE_MIN then redis.call('SETBIT', KEYS[5], bit(tonumber(ts)), 1) end
  else
    gone[#gone + 1] = ts
  end
end
return gone
"#;

/// The mirror's read (and the floors applied): see `mirror`.
pub(super) const SYNC: &str = r#"
local n, s = reseed()
return mirror({}, n, s)
"#;

/// Reserves up to `ARGV[4]` places within capacity `ARGV[5]` (held without a batch):
/// {reserved, next, serving}. Unused by the gate in shared mode.
pub(super) const RESERVE: &str = r#"
local n, s = reseed()
local got = math.min(tonumber(ARGV[4]), tonumber(ARGV[5]) - occupied())
if got <= 0 then return {0, n, s} end
redis.call('INCRBY', KEYS[8], S(got))
return {got, n, s}
"#;

/// Gives back `ARGV[4]` places held (saturating at 0).
pub(super) const UNRESERVE: &str = r#"
redis.call('SET', KEYS[8], S(math.max(0, pend() - tonumber(ARGV[4]))))
return 1
"#;

/// Late arrival `ARGV[4]` seen at `ARGV[5]`: late arrivals ahead of it.
pub(super) const LATE_ARRIVE: &str = r#"
return late_arrive(ARGV[4], ARGV[5])
"#;

/// `ARGV[4]` took a place: 1 if it was in the late line.
pub(super) const LATE_LEAVE: &str = r#"
redis.call('ZREM', KEYS[10], ARGV[4])
return redis.call('ZREM', KEYS[9], ARGV[4])
"#;

/// Drops late arrivals not seen since `ARGV[4]`: how many.
pub(super) const LATE_EXPIRE: &str = r#"
return late_expire(tonumber(ARGV[4]))
"#;

/// Empties the late line.
pub(super) const LATE_CLEAR: &str = r#"
redis.call('DEL', KEYS[9], KEYS[10])
return 1
"#;

/// The fleet's step, for node `ARGV[1]`: the leader lease (`KEYS[1]`, taken if free, extended
/// if held, `ARGV[2]` ms) and the epoch (`KEYS[2]`, created as `ARGV[3]` with its birth in
/// `KEYS[3]` if Redis has none: it was emptied or is new). With `ARGV[4]` = 1 the lease is
/// given up instead (a clean stop). Returns {1 if leader, the epoch}.
pub(super) const FLEET: &str = r#"
local h = redis.call('GET', KEYS[1])
if ARGV[4] == '1' then
  if h == ARGV[1] then redis.call('DEL', KEYS[1]) end
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {0, '', 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The first write is one Redis refuses when out of memory (a script that has written once is
-- let finish): so a Redis that cannot take writes fails this probe and counts as down.
redis.call('ZADD', KEYS[4], now, ARGV[1])
local lead = 0
if h == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]); lead = 1
elseif not h then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); lead = 1
end
-- A new epoch when Redis has none (emptied, or new) and also when the Redis process is not the
-- one that last saw this fleet (restarted, even with its data: persistence may have lost the
-- last writes; a replica promoted): the nodes then raise the counters and re-report sessions
-- during the grace before anyone writes.
local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
local e = redis.call('GET', KEYS[2])
if not e or redis.call('GET', KEYS[5]) ~= rid then
  e = ARGV[3]
  redis.call('SET', KEYS[2], e)
  redis.call('SET', KEYS[3], string.format('%d', now))
  redis.call('SET', KEYS[5], rid)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 5000)
return {lead, e, redis.call('ZCARD', KEYS[4])}
"#;

/// The pre-queue draw of the opening `ARGV[4]`: set to `ARGV[5]` (start, end, key in hex) by
/// the first node, kept 2 days; also remembered as the last draw. Returns the draw in force.
pub(super) const SHUFFLE: &str = r#"
local k = KEYS[6] .. ':shuffle:' .. ARGV[4]
redis.call('SET', k, ARGV[5], 'NX', 'EX', 172800)
local v = redis.call('GET', k)
redis.call('SET', KEYS[6] .. ':shuffle:last', v)
return v
"#;

/// After Redis lost its data: the batches of held places this node's mirror knew (`ARGV[6..]`,
/// start and end pairs), taken back in with at most `ARGV[5]` places in all (the places held
/// the mirror knew), held until `ARGV[4]`. A batch already there (another node did it) is left
/// alone. Returns how many places were held again.
pub(super) const RESTORE_HELD: &str = r#"
local left = tonumber(ARGV[5])
local added = 0
for i = 6, #ARGV - 1, 2 do
  local a, b = ARGV[i], ARGV[i + 1]
  if left <= 0 then break end
  if not redis.call('ZSCORE', KEYS[6], a) then
    local k = math.min(tonumber(b) - tonumber(a), left)
    if k > 0 then
      redis.call('ZADD', KEYS[6], a, a)
      redis.call('HSET', KEYS[7], a .. ':b', b, a .. ':l', S(k), a .. ':d', ARGV[4])
      redis.call('INCRBY', KEYS[8], S(k))
      left = left - k
      added = added + k
    end
  end
end
return added
"#;

/// The leak guard's binding of session `KEYS[1]` to user `ARGV[1]` for `ARGV[2]` ms: taken if
/// free, extended if the same user's; 0 if bound to another user. A binding taken is published
/// on channel `ARGV[3]` as `b NODE SESSION USER` (`ARGV[4]`, the key's last part in hex), so the
/// other nodes know it before the session's first request reaches them.
pub(super) const BIND: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[4] then
    redis.call('PUBLISH', ARGV[3], string.format('b %s %s %s', ARGV[4],
      string.match(KEYS[1], '([^:]*)$'), ARGV[1]))
  end
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// An admin change of gate `KEYS[1]`: fields and values from `ARGV[2]`, its version above both
/// the stored one and the publishing node's floor `ARGV[1]` (versions never go backwards, even
/// after Redis lost its data). Returns the new version.
pub(super) const ADMIN: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
local f = tonumber(ARGV[1]) or 0
if f > v then v = f end
v = v + 1
for i = 2, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'version', string.format('%d', v))
return v
"#;

/// The portal's capacity `ARGV[4]`, shared by the fleet: each node holds a part of it
/// (`KEYS[1]`, a hash node → `held:want:last:since`, times in Redis ms). Node `ARGV[1]` reports
/// the part it keeps (`ARGV[2]`: at most what it was granted, and at least what it has at the
/// portal now) and what it would use (`ARGV[3]`). Every node's target is a max-min fair split
/// of the capacity over the wants (whatever nobody wants is split evenly); a node grows toward
/// its target only out of what no other node holds, so the parts never add up to more than
/// the capacity, and shrinks by reporting less once its requests have left the portal.
///
/// A node's part is taken back when it has not reported for `ARGV[5]` ms while the caller
/// reported without a gap longer than `ARGV[6]` ms (`since`: the start of that run): after an
/// outage of Redis nobody takes anyone's part until every node had the time to report again.
/// A node grows only after such a run of `ARGV[5]` ms (so a hash Redis forgot, emptied or not,
/// is refilled by every live node before anyone grows), and not while its epoch (`ARGV[8]`) is
/// not Redis's `KEYS[2]`, nor for `ARGV[7]` ms after a new epoch (`KEYS[3]`, its birth). `ARGV[9]` = 1 gives the part up (a clean stop).
/// Returns {part granted, target}.
pub(super) const PORTAL: &str = r#"
local me = ARGV[1]
if ARGV[9] == '1' then redis.call('HDEL', KEYS[1], me); return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep, want, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl, gap, grace = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local all = redis.call('HGETALL', KEYS[1])
local others = {}
local since = now
for i = 1, #all, 2 do
  local h, w, l, s = string.match(all[i + 1], '^(%d+):(%d+):(%d+):(%d+)$')
  if all[i] == me then
    if h and now - tonumber(l) <= gap then since = tonumber(s) end
  elseif h then
    others[#others + 1] = {n = all[i], held = tonumber(h), want = tonumber(w), last = tonumber(l)}
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
local alive, held_others = {}, 0
for _, e in ipairs(others) do
  if now - math.max(e.last, since) > ttl then
    redis.call('HDEL', KEYS[1], e.n)
  else
    alive[#alive + 1] = e
    held_others = held_others + e.held
  end
end
alive[#alive + 1] = {n = me, held = keep, want = want}
-- Max-min fair: the smallest wants first, each at most an even split of what is left.
table.sort(alive, function(a, b)
  if a.want ~= b.want then return a.want < b.want end
  return a.n < b.n
end)
local left, target = cap, {}
for i, e in ipairs(alive) do
  local give = math.min(e.want, math.floor(left / (#alive - i + 1)))
  target[e.n] = give
  left = left - give
end
-- What nobody wants, evenly (the first in name order take the remainder).
table.sort(alive, function(a, b) return a.n < b.n end)
local base, rem = math.floor(left / #alive), left % #alive
for i, e in ipairs(alive) do
  target[e.n] = target[e.n] + base
  if i <= rem then target[e.n] = target[e.n] + 1 end
end
local mine = target[me]
local held = keep
local epoch_ok = redis.call('GET', KEYS[2]) == ARGV[8]
local born = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
-- Growing needs a run of reports without a gap for a whole ttl: every node still holding a
-- part has reported in that time (or is taken for dead), whatever Redis forgot meanwhile.
if mine > held and epoch_ok and now - born >= grace and now - since >= ttl then
  held = math.max(held, math.min(mine, cap - held_others))
end
redis.call('HSET', KEYS[1], me, string.format('%d:%d:%d:%d', held, want, now, since))
return {held, mine}
"#;
