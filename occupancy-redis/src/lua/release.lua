-- Reproduces Machine::release.
--
-- `release(room)`: Machine::release, a forced release. Nobody in line: `k` = `vacant`. The
-- holder alone: `pending` (`p` stored, no version, no publish; the next join that makes someone
-- wait displaces the holder, see `join`). Two or more: the holder is displaced (reason
-- `server`), `handed`, and `r` is the new state.
local room = ARGV[3]
local st, was = load_room(room)
if (not st) or #st.o == 0 then return reply({k = 'vacant'}, nil) end
if #st.o == 1 then
  st.p = '1'
  save_room(room, was, st, false)
  return reply({k = 'pending'}, nil)
end
displace(room, st, was, 'server')
return reply({k = 'handed'}, room)
