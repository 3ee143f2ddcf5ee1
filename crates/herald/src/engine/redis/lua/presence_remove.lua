-- Removes one client's presence from a channel.
--
-- KEYS[1]  expiry set
-- KEYS[2]  data hash
-- ARGV[1]  client id
redis.call("hdel", KEYS[2], ARGV[1])
redis.call("zrem", KEYS[1], ARGV[1])
return 1
