-- Reads a channel's stream position and, optionally, a range of its publications.
-- An absent position gets a new epoch here, so that an empty stream has an epoch that
-- later publications continue; entries left without a position are dropped (they belong
-- to a lost epoch).
--
-- KEYS[1]  stream key
-- KEYS[2]  meta key
-- ARGV[1]  epoch to use when the stream has none
-- ARGV[2]  meta TTL in milliseconds for a position created here
-- ARGV[3]  "1" to read publications, "0" for the position only
-- ARGV[4]  "0" for oldest first (XRANGE), "1" for newest first (XREVRANGE)
-- ARGV[5]  first id of the range ("-"/"+" for the stream's ends)
-- ARGV[6]  last id of the range
-- ARGV[7]  at most this many entries ("0": all)
-- ARGV[8]  "1" when the range continues a position of the caller: then ARGV[9] is that
--          position's epoch, and on a mismatch no entry is read
-- ARGV[9]  the caller's epoch
--
-- Returns {top offset, epoch, entries}.
local meta = redis.call("hmget", KEYS[2], "e", "s")
local epoch, top = meta[1], meta[2]
if not epoch then
    epoch = ARGV[1]
    top = 0
    redis.call("del", KEYS[1])
    redis.call("hset", KEYS[2], "e", epoch)
    redis.call("pexpire", KEYS[2], ARGV[2])
end
if not top then
    top = 0
end
local entries = {}
if ARGV[3] == "1" and (ARGV[8] == "0" or ARGV[9] == epoch) then
    local cmd = "xrange"
    if ARGV[4] == "1" then
        cmd = "xrevrange"
    end
    if ARGV[7] == "0" then
        entries = redis.call(cmd, KEYS[1], ARGV[5], ARGV[6])
    else
        entries = redis.call(cmd, KEYS[1], ARGV[5], ARGV[6], "COUNT", ARGV[7])
    end
end
return {tonumber(top), epoch, entries}
