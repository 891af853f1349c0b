-- Reproduces Machine::close of restored placeholder sessions whose node never confirmed them.
--
-- `prune(room)`: drops expired placeholders (see `restore`).
local st = load_room(ARGV[3])
return reply({}, nil)
