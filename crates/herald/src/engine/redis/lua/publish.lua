-- Appends one publication to a channel's history stream and publishes it to the nodes,
-- atomically: the offset increment, the epoch (created when the stream has none), the
-- XADD trimmed to the history size, the expiries and the PUBLISH happen in one script, so
-- every node sees offsets in the order they were given and one publish is one round trip.
--
-- KEYS[1]  stream key (XADD entries: id "<offset>-0", field "d" = encoded publication)
-- KEYS[2]  meta key (hash: "e" epoch, "s" top offset)
-- ARGV[1]  encoded publication (without its offset)
-- ARGV[2]  history size (MAXLEN, exact)
-- ARGV[3]  history TTL in milliseconds (the stream expires this long after its newest entry)
-- ARGV[4]  PUB/SUB channel of the nodes
-- ARGV[5]  meta TTL in milliseconds (how long the position outlives the last publication)
-- ARGV[6]  epoch to use when the stream has none
--
-- Returns {offset, epoch}.
local epoch = redis.call("hget", KEYS[2], "e")
if not epoch then
    epoch = ARGV[6]
    redis.call("hset", KEYS[2], "e", epoch)
end
local offset = redis.call("hincrby", KEYS[2], "s", 1)
redis.call("pexpire", KEYS[2], ARGV[5])
if offset == 1 then
    -- A new epoch: entries left from a lost position (an evicted meta key) are not ours.
    redis.call("del", KEYS[1])
end
redis.call("xadd", KEYS[1], "MAXLEN", ARGV[2], offset .. "-0", "d", ARGV[1])
redis.call("pexpire", KEYS[1], ARGV[3])
redis.call("publish", ARGV[4], "p" .. offset .. ":" .. epoch .. ":" .. ARGV[1])
return {offset, epoch}
