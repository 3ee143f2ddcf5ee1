-- Drops a channel's expired presence entries (those of clients whose node stopped
-- refreshing them) and returns the rest.
--
-- KEYS[1]  expiry set
-- KEYS[2]  data hash
--
-- Returns the data hash as a flat list: client id, encoded ClientInfo, ...
local now = redis.call("time")
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call("zrangebyscore", KEYS[1], "-inf", now_ms)
if #expired > 0 then
    -- HDEL in slices: unpack() of a long list overflows Lua's stack.
    for i = 1, #expired, 1000 do
        redis.call("hdel", KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
    end
    redis.call("zremrangebyscore", KEYS[1], "-inf", now_ms)
end
return redis.call("hgetall", KEYS[2])
