-- vfio-user.lua: a Wireshark/tshark dissector for vfio-user captures written by
-- `vfu proxy --pcap` and `vfu serve --pcap` (swift-vfio-user).
--
-- Captures use LINKTYPE_USER0 (147): every packet is one whole vfio-user message
-- behind a small pseudo-header (direction, connection, fds; see docs/debugging.md).
-- Load it with   tshark -X lua_script:contrib/wireshark/vfio-user.lua -r FILE
-- or copy it into ~/.local/lib/wireshark/plugins/.
--
-- It decodes the header and every command's request and reply (VERSION JSON,
-- region and IRQ info with their capability chains, region access, DMA
-- map/unmap/read/write, SET_IRQS, DEVICE_FEATURE with the migration and
-- dirty-logging payloads, WRITE_MULTI, migration data), marks error replies with
-- their errno name, and pairs requests with replies (use `tshark -2` so requests
-- learn their reply's frame). Filter names start with `vfio-user.`.

local vfu = Proto("vfio-user", "vfio-user")

-- ---------------------------------------------------------------- value names
local commands = {
  [1] = "VERSION", [2] = "DMA_MAP", [3] = "DMA_UNMAP", [4] = "DEVICE_GET_INFO",
  [5] = "DEVICE_GET_REGION_INFO", [6] = "DEVICE_GET_REGION_IO_FDS", [7] = "DEVICE_GET_IRQ_INFO",
  [8] = "DEVICE_SET_IRQS", [9] = "REGION_READ", [10] = "REGION_WRITE", [11] = "DMA_READ",
  [12] = "DMA_WRITE", [13] = "DEVICE_RESET", [14] = "DIRTY_PAGES", [15] = "REGION_WRITE_MULTI",
  [16] = "DEVICE_FEATURE", [17] = "MIG_DATA_READ", [18] = "MIG_DATA_WRITE",
}
local errnos = {
  [0] = "0", [1] = "EPERM", [2] = "ENOENT", [3] = "ESRCH", [4] = "EINTR", [5] = "EIO", [6] = "ENXIO",
  [7] = "E2BIG", [8] = "ENOEXEC", [9] = "EBADF", [10] = "ECHILD", [11] = "EAGAIN", [12] = "ENOMEM",
  [13] = "EACCES", [14] = "EFAULT", [16] = "EBUSY", [17] = "EEXIST", [18] = "EXDEV", [19] = "ENODEV",
  [20] = "ENOTDIR", [21] = "EISDIR", [22] = "EINVAL", [23] = "ENFILE", [24] = "EMFILE", [25] = "ENOTTY",
  [27] = "EFBIG", [28] = "ENOSPC", [29] = "ESPIPE", [30] = "EROFS", [32] = "EPIPE", [33] = "EDOM",
  [34] = "ERANGE", [35] = "EDEADLK", [36] = "ENAMETOOLONG", [38] = "ENOSYS", [39] = "ENOTEMPTY",
  [40] = "ELOOP", [42] = "ENOMSG", [61] = "ENODATA", [62] = "ETIME", [71] = "EPROTO", [74] = "EBADMSG",
  [75] = "EOVERFLOW", [84] = "EILSEQ", [90] = "EMSGSIZE", [95] = "EOPNOTSUPP", [104] = "ECONNRESET",
  [105] = "ENOBUFS", [107] = "ENOTCONN", [110] = "ETIMEDOUT", [111] = "ECONNREFUSED", [125] = "ECANCELED",
}
local directions = { [0] = "client to server", [1] = "server to client" }
local arrows = { [0] = "c→s", [1] = "s→c" }
local fd_kinds = { [0] = "unknown", [1] = "memfd", [2] = "regular file", [3] = "eventfd", [4] = "socket", [5] = "other" }
local msg_types = { [0] = "command", [1] = "reply" }
local region_names = { [0] = "BAR0", [1] = "BAR1", [2] = "BAR2", [3] = "BAR3", [4] = "BAR4", [5] = "BAR5",
  [6] = "ROM", [7] = "CONFIG", [8] = "VGA" }
local irq_names = { [0] = "INTX", [1] = "MSI", [2] = "MSIX", [3] = "ERR", [4] = "REQ" }
local region_cap_names = { [1] = "SPARSE_MMAP", [2] = "TYPE", [3] = "MSIX_MAPPABLE", [4] = "NVLINK2_SSATGT",
  [5] = "NVLINK2_LNKSPD" }
local device_cap_names = { [1] = "ZPCI_BASE", [2] = "ZPCI_GROUP", [3] = "ZPCI_UTIL", [4] = "ZPCI_PFIP",
  [5] = "PCI_ATOMIC_COMP" }
local features = { [0] = "PCI_VF_TOKEN", [1] = "MIGRATION", [2] = "MIG_DEVICE_STATE", [3] = "LOW_POWER_ENTRY",
  [4] = "LOW_POWER_ENTRY_WITH_WAKEUP", [5] = "LOW_POWER_EXIT", [6] = "DMA_LOGGING_START",
  [7] = "DMA_LOGGING_STOP", [8] = "DMA_LOGGING_REPORT", [9] = "MIG_DATA_SIZE", [10] = "BUS_MASTER",
  [11] = "DMA_BUF" }
local mig_states = { [0] = "ERROR", [1] = "STOP", [2] = "RUNNING", [3] = "STOP_COPY", [4] = "RESUMING",
  [5] = "RUNNING_P2P", [6] = "PRE_COPY", [7] = "PRE_COPY_P2P" }
local io_fd_types = { [0] = "IOEVENTFD", [1] = "IOREGIONFD", [2] = "IOEVENTFD_SHADOW" }
local dma_layouts = { [0] = "spec (data at offset 32)", [1] = "QEMU 10.1 (count u32, data at offset 28)" }

-- ---------------------------------------------------------------- fields
local F = {}
local function field(key, ctor, ...) F[key] = ctor("vfio-user." .. key, ...) end
local U8, U16, U32, U64 = ProtoField.uint8, ProtoField.uint16, ProtoField.uint32, ProtoField.uint64
local HEX, DEC = base.HEX, base.DEC

field("capture.direction", U8, "Direction", DEC, directions)
field("capture.header_length", U16, "Capture header length", DEC)
field("capture.connection", U32, "Connection", DEC)
field("capture.fds", U16, "fds carried", DEC)
field("capture.flags", U16, "Capture flags", HEX)
field("capture.fd.kind", U32, "fd kind", DEC, fd_kinds)
field("capture.fd.size", U64, "fd size", DEC)

field("msg_id", U16, "Message ID", DEC)
field("command", U16, "Command", DEC, commands)
field("msg_size", U32, "Message size", DEC)
field("flags", U32, "Flags", HEX)
field("flags.type", U32, "Type", DEC, msg_types, 0xf)
field("flags.no_reply", ProtoField.bool, "No reply", 32, nil, 0x10)
field("flags.error", ProtoField.bool, "Error", 32, nil, 0x20)
field("error_no", U32, "Error number", DEC, errnos)
field("response_in", ProtoField.framenum, "Response in", base.NONE, frametype and frametype.RESPONSE)
field("request_in", ProtoField.framenum, "Request in", base.NONE, frametype and frametype.REQUEST)
field("time", ProtoField.relative_time, "Time since request")
field("payload", ProtoField.bytes, "Payload")
field("data", ProtoField.bytes, "Data")
field("argsz", U32, "argsz", DEC)

field("version.major", U16, "Major", DEC)
field("version.minor", U16, "Minor", DEC)
field("version.json", ProtoField.string, "Capabilities JSON")
field("version.max_msg_fds", U32, "max_msg_fds", DEC)
field("version.max_data_xfer_size", U32, "max_data_xfer_size", DEC)
field("version.pgsizes", U64, "pgsizes", HEX)
field("version.max_dma_maps", U32, "max_dma_maps", DEC)
field("version.write_multiple", ProtoField.bool, "write_multiple")

field("dma.flags", U32, "DMA flags", HEX)
field("dma.flags.read", ProtoField.bool, "Read", 32, nil, 0x1)
field("dma.flags.write", ProtoField.bool, "Write", 32, nil, 0x2)
field("dma.offset", U64, "fd offset", HEX)
field("dma.address", U64, "Address", HEX)
field("dma.size", U64, "Size", HEX)
field("dma.unmap_flags", U32, "Unmap flags", HEX)
field("dma.unmap.dirty_bitmap", ProtoField.bool, "GET_DIRTY_BITMAP", 32, nil, 0x1)
field("dma.unmap.all", ProtoField.bool, "ALL", 32, nil, 0x2)
field("dma.bitmap.pgsize", U64, "Bitmap page size", HEX)
field("dma.bitmap.size", U64, "Bitmap size", DEC)
field("dma.count", U64, "Count", DEC)
field("dma.layout", U8, "Layout", DEC, dma_layouts)

field("device_info.flags", U32, "Device flags", HEX)
field("device_info.flags.reset", ProtoField.bool, "RESET", 32, nil, 0x1)
field("device_info.flags.pci", ProtoField.bool, "PCI", 32, nil, 0x2)
field("device_info.flags.caps", ProtoField.bool, "CAPS", 32, nil, 0x80)
field("device_info.num_regions", U32, "Regions", DEC)
field("device_info.num_irqs", U32, "IRQ indices", DEC)
field("device_info.cap_offset", U32, "Capability offset", DEC)

field("region.index", U32, "Region index", DEC, region_names)
field("region_info.flags", U32, "Region flags", HEX)
field("region_info.flags.read", ProtoField.bool, "READ", 32, nil, 0x1)
field("region_info.flags.write", ProtoField.bool, "WRITE", 32, nil, 0x2)
field("region_info.flags.mmap", ProtoField.bool, "MMAP", 32, nil, 0x4)
field("region_info.flags.caps", ProtoField.bool, "CAPS", 32, nil, 0x8)
field("region_info.cap_offset", U32, "Capability offset", DEC)
field("region_info.size", U64, "Size", HEX)
field("region_info.offset", U64, "mmap offset", HEX)
field("cap.id", U16, "Capability ID", DEC)
field("cap.region_id", U16, "Region capability", DEC, region_cap_names)
field("cap.device_id", U16, "Device capability", DEC, device_cap_names)
field("cap.version", U16, "Capability version", DEC)
field("cap.next", U32, "Next", DEC)
field("cap.body", ProtoField.bytes, "Capability body")
field("cap.sparse.nr_areas", U32, "Areas", DEC)
field("cap.sparse.offset", U64, "Area offset", HEX)
field("cap.sparse.size", U64, "Area size", HEX)
field("cap.type.type", U32, "Region type", HEX)
field("cap.type.subtype", U32, "Region subtype", DEC)
field("cap.nvlink2.tgt", U64, "SSATGT", HEX)
field("cap.nvlink2.link_speed", U32, "Link speed", DEC)
field("cap.atomic.flags", U32, "AtomicOps completer flags", HEX)

field("io_fds.flags", U32, "Flags", HEX)
field("io_fds.count", U32, "Entries", DEC)
field("io_fds.offset", U64, "Offset", HEX)
field("io_fds.size", U64, "Size", DEC)
field("io_fds.fd_index", U32, "fd index", DEC)
field("io_fds.type", U32, "Type", DEC, io_fd_types)
field("io_fds.entry_flags", U32, "Entry flags", HEX)
field("io_fds.datamatch", U64, "Datamatch / user data", HEX)

field("irq.index", U32, "IRQ index", DEC, irq_names)
field("irq_info.flags", U32, "IRQ flags", HEX)
field("irq_info.flags.eventfd", ProtoField.bool, "EVENTFD", 32, nil, 0x1)
field("irq_info.flags.maskable", ProtoField.bool, "MASKABLE", 32, nil, 0x2)
field("irq_info.flags.automasked", ProtoField.bool, "AUTOMASKED", 32, nil, 0x4)
field("irq_info.flags.noresize", ProtoField.bool, "NORESIZE", 32, nil, 0x8)
field("irq.count", U32, "Count", DEC)
field("irq.start", U32, "Start", DEC)
field("set_irqs.flags", U32, "SET_IRQS flags", HEX)
field("set_irqs.data_none", ProtoField.bool, "DATA_NONE", 32, nil, 0x1)
field("set_irqs.data_bool", ProtoField.bool, "DATA_BOOL", 32, nil, 0x2)
field("set_irqs.data_eventfd", ProtoField.bool, "DATA_EVENTFD", 32, nil, 0x4)
field("set_irqs.action_mask", ProtoField.bool, "ACTION_MASK", 32, nil, 0x8)
field("set_irqs.action_unmask", ProtoField.bool, "ACTION_UNMASK", 32, nil, 0x10)
field("set_irqs.action_trigger", ProtoField.bool, "ACTION_TRIGGER", 32, nil, 0x20)

field("access.offset", U64, "Offset", HEX)
field("access.count", U32, "Count", DEC)
field("write_multi.count", U64, "Writes", DEC)
field("write_multi.offset", U64, "Offset", HEX)
field("write_multi.count1", U32, "Count", DEC)
field("write_multi.data", U64, "Data", HEX)
field("write_multi.completed", U64, "Completed", DEC)

field("feature.flags", U32, "Feature flags", HEX)
field("feature.index", U32, "Feature", DEC, features, 0xffff)
field("feature.get", ProtoField.bool, "GET", 32, nil, 0x10000)
field("feature.set", ProtoField.bool, "SET", 32, nil, 0x20000)
field("feature.probe", ProtoField.bool, "PROBE", 32, nil, 0x40000)
field("migration.flags", U64, "Migration flags", HEX)
field("migration.device_state", U32, "Device state", DEC, mig_states)
field("migration.data_fd", U32, "data_fd", DEC)
field("migration.stop_copy_length", U64, "stop_copy_length", DEC)
field("logging.page_size", U64, "Page size", HEX)
field("logging.num_ranges", U32, "Ranges", DEC)
field("logging.iova", U64, "IOVA", HEX)
field("logging.length", U64, "Length", HEX)
field("logging.bitmap", ProtoField.bytes, "Dirty bitmap")
field("logging.dirty_pages", U32, "Dirty pages in bitmap", DEC)
field("mig_data.size", U32, "Size", DEC)

local fields = {}
for _, f in pairs(F) do fields[#fields + 1] = f end
vfu.fields = fields

local E = {
  malformed = ProtoExpert.new("vfio-user.malformed", "Malformed vfio-user message", expert.group.MALFORMED, expert.severity.ERROR),
  error_reply = ProtoExpert.new("vfio-user.error_reply", "Error reply", expert.group.RESPONSE_CODE, expert.severity.NOTE),
  unpaired = ProtoExpert.new("vfio-user.unpaired", "Reply without a request", expert.group.SEQUENCE, expert.severity.WARN),
  noreply = ProtoExpert.new("vfio-user.reply_to_no_reply", "Reply to a NO_REPLY request", expert.group.SEQUENCE, expert.severity.WARN),
  qemu_dma = ProtoExpert.new("vfio-user.qemu_dma_layout", "QEMU 10.1 DMA layout: data at offset 28", expert.group.PROTOCOL, expert.severity.NOTE),
  truncated = ProtoExpert.new("vfio-user.truncated", "Captured only in part (snap length)", expert.group.UNDECODED, expert.severity.NOTE),
  raw = ProtoExpert.new("vfio-user.raw", "Unframed bytes: the stream lost its framing", expert.group.MALFORMED, expert.severity.WARN),
}
vfu.experts = { E.malformed, E.error_reply, E.unpaired, E.noreply, E.qemu_dma, E.truncated, E.raw }

-- ---------------------------------------------------------------- helpers
local function hex(n) return string.format("0x%x", n) end
local function hex64(r)
  local v = r:le_uint64()
  local s = v:tohex():gsub("^0+", "")
  return "0x" .. (s == "" and "0" or s)
end
local function name(t, v, fallback) return t[v] or (fallback or "") .. tostring(v) end

-- A decoding context: the message tvb (header at 0), its tree, and bounds checks
-- that mark short messages malformed unless the capture itself was truncated.
local Ctx = {}
Ctx.__index = Ctx
function Ctx:need(offset, n, what)
  if offset + n <= self.len then return true end
  if self.truncated then
    self.tree:add_proto_expert_info(E.truncated)
  else
    self.tree:add_proto_expert_info(E.malformed, string.format("%s needs %d bytes at offset %d, message has %d",
      what or "field", n, offset, self.len))
  end
  return false
end
function Ctx:add(f, off, n, tree) return (tree or self.tree):add_le(f, self.tvb(off, n)) end
function Ctx:u32(off) return self.tvb(off, 4):le_uint() end
function Ctx:u16(off) return self.tvb(off, 2):le_uint() end
function Ctx:info(s) self.infos[#self.infos + 1] = s end

local function flags_tree(c, f, off, bits, tree)
  local it = c:add(f, off, 4, tree)
  for _, b in ipairs(bits) do c:add(b, off, 4, it) end
  return it
end

local function add_data(c, off, n, tree)
  if n <= 0 then return end
  local avail = math.min(n, c.len - off)
  if avail > 0 then c:add(F["data"], off, avail, tree) end
end

-- ---------------------------------------------------------------- capabilities
local function region_cap_chain(c, base, first, limit, tree)
  local at, seen = first, 0
  while at ~= 0 and seen < 64 do
    seen = seen + 1
    local o = base + at
    if not c:need(o, 8, "capability header") then return end
    local id, ver, nxt = c:u16(o), c:u16(o + 2), c:u32(o + 4)
    local ctree = tree:add(c.tvb(o, math.min(c.len - o, 8)), "Capability " .. name(region_cap_names, id, "id "))
    c:add(F["cap.region_id"], o, 2, ctree); c:add(F["cap.version"], o + 2, 2, ctree); c:add(F["cap.next"], o + 4, 4, ctree)
    if id == 1 then
      if not c:need(o + 16, 0, "SPARSE_MMAP") or not c:need(o, 16, "SPARSE_MMAP") then return end
      local n = c:u32(o + 8)
      c:add(F["cap.sparse.nr_areas"], o + 8, 4, ctree)
      for i = 0, math.min(n, 256) - 1 do
        local a = o + 16 + 16 * i
        if not c:need(a, 16, "sparse area") then return end
        local at_ = ctree:add(c.tvb(a, 16), string.format("Area %d", i))
        c:add(F["cap.sparse.offset"], a, 8, at_); c:add(F["cap.sparse.size"], a + 8, 8, at_)
      end
    elseif id == 2 then
      if not c:need(o, 16, "TYPE") then return end
      c:add(F["cap.type.type"], o + 8, 4, ctree); c:add(F["cap.type.subtype"], o + 12, 4, ctree)
    elseif id == 4 then
      if not c:need(o, 16, "NVLINK2_SSATGT") then return end
      c:add(F["cap.nvlink2.tgt"], o + 8, 8, ctree)
    elseif id == 5 then
      if not c:need(o, 16, "NVLINK2_LNKSPD") then return end
      c:add(F["cap.nvlink2.link_speed"], o + 8, 4, ctree)
    end
    if nxt ~= 0 and nxt <= at then
      c.tree:add_proto_expert_info(E.malformed, "capability chain loops back")
      return
    end
    if nxt ~= 0 and base + nxt >= limit then
      c.tree:add_proto_expert_info(E.malformed, "capability chain points past the reply")
      return
    end
    at = nxt
  end
end

local function device_cap_chain(c, base, first, tree)
  local at, seen = first, 0
  while at ~= 0 and seen < 64 do
    seen = seen + 1
    local o = base + at
    if not c:need(o, 8, "capability header") then return end
    local id, nxt = c:u16(o), c:u32(o + 4)
    local size = (nxt ~= 0 and nxt > at) and (nxt - at) or (c.len - o)
    local ctree = tree:add(c.tvb(o, math.min(size, c.len - o)), "Capability " .. name(device_cap_names, id, "id "))
    c:add(F["cap.device_id"], o, 2, ctree); c:add(F["cap.version"], o + 2, 2, ctree); c:add(F["cap.next"], o + 4, 4, ctree)
    if id == 5 and c.len >= o + 12 then c:add(F["cap.atomic.flags"], o + 8, 4, ctree)
    elseif size > 8 and c.len > o + 8 then c:add(F["cap.body"], o + 8, math.min(size, c.len - o) - 8, ctree) end
    if nxt ~= 0 and nxt <= at then c.tree:add_proto_expert_info(E.malformed, "capability chain loops back"); return end
    at = nxt
  end
end

-- ---------------------------------------------------------------- commands
local P = 16  -- payload offset
local decode = {}

decode[1] = function(c)  -- VERSION
  if not c:need(P, 4, "VERSION") then return end
  c:add(F["version.major"], P, 2); c:add(F["version.minor"], P + 2, 2)
  c:info(string.format("v%d.%d", c:u16(P), c:u16(P + 2)))
  if c.len > P + 4 then
    local r = c.tvb(P + 4, c.len - P - 4)
    local raw = r:raw()
    local nul = raw:find("\0", 1, true)
    if not nul and not c.truncated then
      c.tree:add_proto_expert_info(E.malformed, "VERSION JSON is not NUL-terminated")
    end
    local json = nul and raw:sub(1, nul - 1) or raw
    local jt = c.tree:add(F["version.json"], r, json)
    local function num(key, f)
      local v = json:match('"' .. key .. '"%s*:%s*(%d+)')
      if v then jt:add(f, r, tonumber(v)):set_generated() end
    end
    num("max_msg_fds", F["version.max_msg_fds"]); num("max_data_xfer_size", F["version.max_data_xfer_size"])
    num("max_dma_maps", F["version.max_dma_maps"])
    local pg = json:match('"pgsizes"%s*:%s*(%d+)')
    if pg then jt:add(F["version.pgsizes"], r, UInt64.new(tonumber(pg))):set_generated() end
    local wm = json:match('"write_multiple"%s*:%s*(%a+)')
    if wm then jt:add(F["version.write_multiple"], r, wm == "true"):set_generated() end
  end
end

decode[2] = function(c)  -- DMA_MAP
  if c.reply then return end
  if not c:need(P, 32, "DMA_MAP") then return end
  c:add(F["argsz"], P, 4)
  flags_tree(c, F["dma.flags"], P + 4, { F["dma.flags.read"], F["dma.flags.write"] })
  c:add(F["dma.offset"], P + 8, 8); c:add(F["dma.address"], P + 16, 8); c:add(F["dma.size"], P + 24, 8)
  c:info("address=" .. hex64(c.tvb(P + 16, 8)) .. " size=" .. hex64(c.tvb(P + 24, 8)))
end

decode[3] = function(c)  -- DMA_UNMAP (the reply echoes the request)
  if c.reply and c.len == P then return end
  if not c:need(P, 24, "DMA_UNMAP") then return end
  c:add(F["argsz"], P, 4)
  local fl = c:u32(P + 4)
  flags_tree(c, F["dma.unmap_flags"], P + 4, { F["dma.unmap.dirty_bitmap"], F["dma.unmap.all"] })
  c:add(F["dma.address"], P + 8, 8); c:add(F["dma.size"], P + 16, 8)
  c:info("address=" .. hex64(c.tvb(P + 8, 8)) .. " size=" .. hex64(c.tvb(P + 16, 8)) .. (fl == 2 and " ALL" or ""))
  if fl % 2 == 1 and c.len >= P + 40 then
    c:add(F["dma.bitmap.pgsize"], P + 24, 8); c:add(F["dma.bitmap.size"], P + 32, 8)
    add_data(c, P + 40, c.len - P - 40)
  end
end

decode[4] = function(c)  -- DEVICE_GET_INFO
  if not c:need(P, 16, "DEVICE_GET_INFO") then return end
  c:add(F["argsz"], P, 4)
  flags_tree(c, F["device_info.flags"], P + 4, { F["device_info.flags.reset"], F["device_info.flags.pci"], F["device_info.flags.caps"] })
  c:add(F["device_info.num_regions"], P + 8, 4); c:add(F["device_info.num_irqs"], P + 12, 4)
  if c.reply then
    c:info(string.format("flags=%s regions=%d irqs=%d", hex(c:u32(P + 4)), c:u32(P + 8), c:u32(P + 12)))
    if c.len >= P + 24 then  -- the device-info-caps extension (docs/protocol-extensions.md)
      c:add(F["device_info.cap_offset"], P + 16, 4)
      local off = c:u32(P + 16)
      if off ~= 0 then device_cap_chain(c, P, off, c.tree) end
    end
  else
    c:info("argsz=" .. c:u32(P))
  end
end

decode[5] = function(c)  -- DEVICE_GET_REGION_INFO
  if not c:need(P, 32, "DEVICE_GET_REGION_INFO") then return end
  c:add(F["argsz"], P, 4)
  flags_tree(c, F["region_info.flags"], P + 4, { F["region_info.flags.read"], F["region_info.flags.write"],
    F["region_info.flags.mmap"], F["region_info.flags.caps"] })
  c:add(F["region.index"], P + 8, 4); c:add(F["region_info.cap_offset"], P + 12, 4)
  c:add(F["region_info.size"], P + 16, 8); c:add(F["region_info.offset"], P + 24, 8)
  local index = c:u32(P + 8)
  if c.reply then
    c:info(string.format("index=%d flags=%s size=%s", index, hex(c:u32(P + 4)), hex64(c.tvb(P + 16, 8))))
    local fl, off = c:u32(P + 4), c:u32(P + 12)
    if math.floor(fl / 8) % 2 == 1 and off ~= 0 then
      if off < 32 then c.tree:add_proto_expert_info(E.malformed, "cap_offset inside the fixed region info")
      else region_cap_chain(c, P, off, c.len, c.tree) end
    end
  else
    c:info(string.format("index=%d argsz=%d", index, c:u32(P)))
  end
end

decode[6] = function(c)  -- DEVICE_GET_REGION_IO_FDS
  if not c:need(P, 16, "DEVICE_GET_REGION_IO_FDS") then return end
  c:add(F["argsz"], P, 4); c:add(F["io_fds.flags"], P + 4, 4); c:add(F["region.index"], P + 8, 4); c:add(F["io_fds.count"], P + 12, 4)
  local count = c:u32(P + 12)
  c:info(string.format("index=%d count=%d", c:u32(P + 8), count))
  if c.reply and count > 0 and c.len > P + 16 then
    local stride = math.floor((c.len - P - 16) / count)
    if stride < 40 then c.tree:add_proto_expert_info(E.malformed, "entries shorter than 40 bytes"); return end
    for i = 0, math.min(count, 1024) - 1 do
      local e = P + 16 + stride * i
      local et = c.tree:add(c.tvb(e, stride), string.format("Entry %d", i))
      c:add(F["io_fds.offset"], e, 8, et); c:add(F["io_fds.size"], e + 8, 8, et); c:add(F["io_fds.fd_index"], e + 16, 4, et)
      c:add(F["io_fds.type"], e + 20, 4, et); c:add(F["io_fds.entry_flags"], e + 24, 4, et)
      c:add(F["io_fds.datamatch"], e + stride - 8, 8, et)
    end
  end
end

decode[7] = function(c)  -- DEVICE_GET_IRQ_INFO
  if not c:need(P, 16, "DEVICE_GET_IRQ_INFO") then return end
  c:add(F["argsz"], P, 4)
  flags_tree(c, F["irq_info.flags"], P + 4, { F["irq_info.flags.eventfd"], F["irq_info.flags.maskable"],
    F["irq_info.flags.automasked"], F["irq_info.flags.noresize"] })
  c:add(F["irq.index"], P + 8, 4); c:add(F["irq.count"], P + 12, 4)
  local idx = c:u32(P + 8)
  if c.reply then c:info(string.format("index=%s flags=%s count=%d", name(irq_names, idx), hex(c:u32(P + 4)), c:u32(P + 12)))
  else c:info("index=" .. name(irq_names, idx)) end
end

local function set_irqs_kind(fl)
  local data = (fl % 2 == 1 and "NONE") or (math.floor(fl / 2) % 2 == 1 and "BOOL") or (math.floor(fl / 4) % 2 == 1 and "EVENTFD") or "?"
  local action = (math.floor(fl / 8) % 2 == 1 and "MASK") or (math.floor(fl / 16) % 2 == 1 and "UNMASK")
    or (math.floor(fl / 32) % 2 == 1 and "TRIGGER") or "?"
  return data .. "|" .. action
end

decode[8] = function(c)  -- DEVICE_SET_IRQS
  if c.reply then return end
  if not c:need(P, 20, "DEVICE_SET_IRQS") then return end
  c:add(F["argsz"], P, 4)
  flags_tree(c, F["set_irqs.flags"], P + 4, { F["set_irqs.data_none"], F["set_irqs.data_bool"], F["set_irqs.data_eventfd"],
    F["set_irqs.action_mask"], F["set_irqs.action_unmask"], F["set_irqs.action_trigger"] })
  c:add(F["irq.index"], P + 8, 4); c:add(F["irq.start"], P + 12, 4); c:add(F["irq.count"], P + 16, 4)
  add_data(c, P + 20, c.len - P - 20)
  c:info(string.format("index=%s start=%d count=%d %s", name(irq_names, c:u32(P + 8)), c:u32(P + 12), c:u32(P + 16),
    set_irqs_kind(c:u32(P + 4))))
end

local function region_access(c)
  if not c:need(P, 16, "region access") then return end
  c:add(F["access.offset"], P, 8); c:add(F["region.index"], P + 8, 4); c:add(F["access.count"], P + 12, 4)
  local count = c:u32(P + 12)
  c:info(string.format("region=%s offset=%s count=%d", name(region_names, c:u32(P + 8)), hex64(c.tvb(P, 8)), count))
  local has_data = (c.cmd == 9 and c.reply) or (c.cmd == 10 and not c.reply)
  if has_data then
    if c.msg_size - P - 16 ~= count and not c.truncated then
      c.tree:add_proto_expert_info(E.malformed, string.format("count %d but %d data bytes", count, c.msg_size - P - 16))
    end
    add_data(c, P + 16, c.len - P - 16)
  end
end
decode[9] = region_access
decode[10] = region_access

local function dma_access(c)
  if c.reply and c.len == P then return end  -- QEMU's DMA_WRITE reply is header only
  if not c:need(P, 16, "DMA access") then return end
  c:add(F["dma.address"], P, 8)
  local has_data = (c.cmd == 11 and c.reply) or (c.cmd == 12 and not c.reply)
  -- QEMU 10.1 sends {u64 address; u32 count; data} with data at offset 28: the u64
  -- count then holds data bytes in its high half (docs/debugging.md; 11.1.3 follows the spec).
  local hi = c:u32(P + 12)
  if has_data and hi ~= 0 and c:u32(P + 8) == c.msg_size - 32 then
    c:add(F["access.count"], P + 8, 4)
    c.tree:add(F["dma.layout"], c.tvb(P + 8, 8), 1):set_generated()
    c.tree:add_proto_expert_info(E.qemu_dma)
    add_data(c, P + 12, math.min(c:u32(P + 8), c.len - P - 12))
    c:info(string.format("address=%s count=%d", hex64(c.tvb(P, 8)), c:u32(P + 8)))
    return
  end
  c:add(F["dma.count"], P + 8, 8)
  c:info(string.format("address=%s count=%s", hex64(c.tvb(P, 8)), tostring(c.tvb(P + 8, 8):le_uint64())))
  if has_data then add_data(c, P + 16, c.len - P - 16) end
end
decode[11] = dma_access
decode[12] = dma_access

decode[15] = function(c)  -- REGION_WRITE_MULTI
  if not c:need(P, 8, "REGION_WRITE_MULTI") then return end
  if c.reply then
    c:add(F["write_multi.completed"], P, 8)
    c:info("completed=" .. tostring(c.tvb(P, 8):le_uint64()))
    return
  end
  c:add(F["write_multi.count"], P, 8)
  local n = c:u32(P)  -- the low 32 bits of the u64: QEMU sends at most 200
  c:info("writes=" .. n)
  if c.msg_size ~= P + 8 + 24 * n and not c.truncated then
    c.tree:add_proto_expert_info(E.malformed, string.format("%d writes need %d bytes, message has %d", n, P + 8 + 24 * n, c.msg_size))
  end
  for i = 0, math.min(n, 4096) - 1 do
    local e = P + 8 + 24 * i
    if e + 24 > c.len then break end
    local et = c.tree:add(c.tvb(e, 24), string.format("Write %d: %s[%s]", i, name(region_names, c:u32(e + 8)), hex64(c.tvb(e, 8))))
    c:add(F["write_multi.offset"], e, 8, et); c:add(F["region.index"], e + 8, 4, et)
    c:add(F["write_multi.count1"], e + 12, 4, et); c:add(F["write_multi.data"], e + 16, 8, et)
  end
end

local function popcount_bytes(tvb, off, n)
  local count = 0
  for i = 0, n - 1 do
    local b = tvb(off + i, 1):uint()
    while b > 0 do count = count + (b % 2); b = math.floor(b / 2) end
  end
  return count
end

decode[16] = function(c)  -- DEVICE_FEATURE
  if c.reply and c.len == P then return end
  if not c:need(P, 8, "DEVICE_FEATURE") then return end
  c:add(F["argsz"], P, 4)
  local fl = c:u32(P + 4)
  local ft = c:add(F["feature.flags"], P + 4, 4)
  c:add(F["feature.index"], P + 4, 4, ft); c:add(F["feature.get"], P + 4, 4, ft)
  c:add(F["feature.set"], P + 4, 4, ft); c:add(F["feature.probe"], P + 4, 4, ft)
  local feature = fl % 65536
  local get, set, probe = math.floor(fl / 65536) % 2 == 1, math.floor(fl / 131072) % 2 == 1, math.floor(fl / 262144) % 2 == 1
  local ops = {}
  if get then ops[#ops + 1] = "GET" end
  if set then ops[#ops + 1] = "SET" end
  if probe then ops[#ops + 1] = "PROBE" end
  c:info(name(features, feature, "feature ") .. " " .. table.concat(ops, "|"))
  local D = P + 8
  local has = c.len > D
  if probe or not has then return end
  if feature == 1 and c.reply then  -- MIGRATION
    if c:need(D, 8, "MIGRATION flags") then c:add(F["migration.flags"], D, 8) end
  elseif feature == 2 then  -- MIG_DEVICE_STATE
    if c:need(D, 8, "MIG_DEVICE_STATE") then
      c:add(F["migration.device_state"], D, 4); c:add(F["migration.data_fd"], D + 4, 4)
      c:info("state=" .. name(mig_states, c:u32(D)))
    end
  elseif feature == 6 then  -- DMA_LOGGING_START
    if c:need(D, 16, "DMA_LOGGING_START") then
      c:add(F["logging.page_size"], D, 8); c:add(F["logging.num_ranges"], D + 8, 4)
      local n = c:u32(D + 8)
      for i = 0, math.min(n, 4096) - 1 do
        local r = D + 16 + 16 * i
        if not c:need(r, 16, "logging range") then break end
        local rt = c.tree:add(c.tvb(r, 16), string.format("Range %d", i))
        c:add(F["logging.iova"], r, 8, rt); c:add(F["logging.length"], r + 8, 8, rt)
      end
    end
  elseif feature == 8 then  -- DMA_LOGGING_REPORT
    if c:need(D, 24, "DMA_LOGGING_REPORT") then
      c:add(F["logging.iova"], D, 8); c:add(F["logging.length"], D + 8, 8); c:add(F["logging.page_size"], D + 16, 8)
      if c.reply and c.len > D + 24 then
        local n = c.len - D - 24
        c:add(F["logging.bitmap"], D + 24, n)
        c.tree:add(F["logging.dirty_pages"], c.tvb(D + 24, n), popcount_bytes(c.tvb, D + 24, n)):set_generated()
      end
    end
  elseif feature == 9 and c.reply then  -- MIG_DATA_SIZE
    if c:need(D, 8, "MIG_DATA_SIZE") then c:add(F["migration.stop_copy_length"], D, 8) end
  else
    add_data(c, D, c.len - D)
  end
end

decode[17] = function(c)  -- MIG_DATA_READ
  if not c:need(P, 8, "MIG_DATA_READ") then return end
  c:add(F["argsz"], P, 4); c:add(F["mig_data.size"], P + 4, 4)
  c:info("size=" .. c:u32(P + 4))
  if c.reply then add_data(c, P + 8, math.min(c:u32(P + 4), c.len - P - 8)) end
end

decode[18] = function(c)  -- MIG_DATA_WRITE
  if c.reply then return end
  if not c:need(P, 8, "MIG_DATA_WRITE") then return end
  c:add(F["argsz"], P, 4); c:add(F["mig_data.size"], P + 4, 4)
  c:info("size=" .. c:u32(P + 4))
  add_data(c, P + 8, c.len - P - 8)
end

-- ---------------------------------------------------------------- pairing
-- Filled on the first pass, in frame order: requests by (connection, direction,
-- msg_id) until their reply comes; then both frames point at each other.
local pending, request_of, reply_of = {}, {}, {}

function vfu.init()
  pending, request_of, reply_of = {}, {}, {}
end

local function pair(pinfo, conn, dir, id, is_reply, no_reply)
  if pinfo.visited then return end
  if not is_reply then
    pending[conn .. ":" .. dir .. ":" .. id] = { frame = pinfo.number, ts = pinfo.abs_ts, no_reply = no_reply }
  else
    local key = conn .. ":" .. (1 - dir) .. ":" .. id
    local req = pending[key]
    if req then
      pending[key] = nil
      request_of[pinfo.number] = req
      reply_of[req.frame] = pinfo.number
    end
  end
end

-- ---------------------------------------------------------------- dissector
function vfu.dissector(tvb, pinfo, tree)
  pinfo.cols.protocol = "vfio-user"
  local root = tree:add(vfu, tvb())
  if tvb:len() < 12 then
    root:add_proto_expert_info(E.malformed, "packet shorter than the 12-byte capture header")
    pinfo.cols.info = "truncated capture header"
    return tvb:len()
  end
  local hlen = tvb(2, 2):le_uint()
  local dir, conn, nfds, cflags = tvb(1, 1):uint(), tvb(4, 4):le_uint(), tvb(8, 2):le_uint(), tvb(10, 2):le_uint()
  local ct = root:add(tvb(0, math.min(hlen, tvb:len())), string.format("Capture: %s, connection %d, %d fds",
    directions[dir] or "?", conn, nfds))
  ct:add(F["capture.direction"], tvb(1, 1)); ct:add_le(F["capture.header_length"], tvb(2, 2))
  ct:add_le(F["capture.connection"], tvb(4, 4)); ct:add_le(F["capture.fds"], tvb(8, 2)); ct:add_le(F["capture.flags"], tvb(10, 2))
  for i = 0, nfds - 1 do
    local o = 12 + 16 * i
    if o + 16 > tvb:len() then break end
    local ft = ct:add(tvb(o, 16), string.format("fd %d: %s", i, fd_kinds[tvb(o, 4):le_uint()] or "?"))
    ft:add_le(F["capture.fd.kind"], tvb(o, 4)); ft:add_le(F["capture.fd.size"], tvb(o + 8, 8))
  end
  if hlen > tvb:len() then root:add_proto_expert_info(E.malformed, "capture header longer than the packet"); return end
  local m = tvb(hlen):tvb()
  local arrow = arrows[dir] or "?"
  pinfo.cols.src = dir == 0 and "client" or "server"
  pinfo.cols.dst = dir == 0 and "server" or "client"
  if cflags % 2 == 1 then  -- raw bytes: no framing
    root:add_proto_expert_info(E.raw)
    root:add(F["payload"], m())
    pinfo.cols.info = arrow .. " unframed bytes (" .. m:len() .. ")"
    return
  end
  local truncated = math.floor(cflags / 2) % 2 == 1 or math.floor(cflags / 4) % 2 == 1
  if m:len() < 16 then
    root:add_proto_expert_info(truncated and E.truncated or E.malformed, "message shorter than its 16-byte header")
    pinfo.cols.info = arrow .. " incomplete message"
    return
  end
  local id, cmd, size, fl, err = m(0, 2):le_uint(), m(2, 2):le_uint(), m(4, 4):le_uint(), m(8, 4):le_uint(), m(12, 4):le_uint()
  local ht = root:add(m(0, 16), "Header")
  ht:add_le(F["msg_id"], m(0, 2)); ht:add_le(F["command"], m(2, 2)); ht:add_le(F["msg_size"], m(4, 4))
  local flt = ht:add_le(F["flags"], m(8, 4))
  flt:add_le(F["flags.type"], m(8, 4)); flt:add_le(F["flags.no_reply"], m(8, 4)); flt:add_le(F["flags.error"], m(8, 4))
  local is_reply, is_error, no_reply = fl % 16 == 1, math.floor(fl / 32) % 2 == 1, math.floor(fl / 16) % 2 == 1
  local et = ht:add_le(F["error_no"], m(12, 4))
  local cname = commands[cmd] or ("command " .. cmd)
  local kind = is_reply and "reply" or (fl % 16 == 0 and (no_reply and "req(no-reply)" or "req") or ("type=" .. fl % 16))
  local c = setmetatable({ tvb = m, tree = root, len = m:len(), msg_size = size, cmd = cmd, reply = is_reply,
    truncated = truncated or m:len() < size, infos = {} }, Ctx)
  if size ~= m:len() and not c.truncated then
    root:add_proto_expert_info(E.malformed, string.format("msg_size %d but %d bytes captured", size, m:len()))
  end
  if fl % 16 > 1 then root:add_proto_expert_info(E.malformed, "type bits are neither command nor reply") end
  root:append_text(string.format(", %s %s #%d", cname, kind, id))

  pair(pinfo, conn, dir, id, is_reply, no_reply)
  if is_reply then
    local req = request_of[pinfo.number]
    if req then
      root:add(F["request_in"], req.frame):set_generated()
      local dt = pinfo.abs_ts - req.ts
      local secs = math.floor(dt)
      root:add(F["time"], NSTime.new(secs, math.floor((dt - secs) * 1e9))):set_generated()
      if req.no_reply then root:add_proto_expert_info(E.noreply) end
    else
      root:add_proto_expert_info(E.unpaired)
    end
  elseif reply_of[pinfo.number] then
    root:add(F["response_in"], reply_of[pinfo.number]):set_generated()
  end

  local line = string.format("%s #%d %s %s", arrow, id, cname, kind)
  if is_error then
    local ename = errnos[err] or ("errno " .. err)
    et:add_proto_expert_info(E.error_reply, "error " .. ename .. " (" .. err .. ")")
    line = line .. " error=" .. ename .. "(" .. err .. ")"
  elseif size > 16 or decode[cmd] then
    local d = decode[cmd]
    if d then d(c) elseif m:len() > 16 then root:add(F["payload"], m(16)) end
    if #c.infos > 0 then line = line .. " " .. table.concat(c.infos, " ") end
  end
  if nfds > 0 then line = line .. " fds=" .. nfds end
  pinfo.cols.info = line
  return tvb:len()
end

DissectorTable.get("wtap_encap"):add(wtap.USER0, vfu)
