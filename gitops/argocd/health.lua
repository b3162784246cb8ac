-- Argo CD health check for xks-operator.io/ExternalKeyStore.
-- Body of resource.customizations.health.xks-operator.io_ExternalKeyStore in
-- argocd-cm (see docs/gitops.md). Lua 5.1 (Argo CD runs gopher-lua); `obj` is
-- the live resource. Tested by gitops/argocd/test.lua (ci/test-argocd-health.sh).
--
-- Order matters:
--   1. spec.suspend                                   -> Suspended
--   2. being deleted                                  -> Progressing
--   3. no status / generation not yet observed        -> Progressing
--   4. Stalled=True                                   -> Degraded
--   5. operation AwaitingApproval                     -> Progressing (how to approve)
--   6. Reconciling=True                               -> Progressing (current step)
--   7. Ready=True for this generation                 -> Healthy
--   8. store FAILED (connectionErrorCode)             -> Degraded
--   9. ObserveOnly with a Planned operation (drift)   -> Suspended
--  10. anything else (Ready False/Unknown, waiting)   -> Progressing
local hs = {}

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

-- "Ready: message" or the reason when there is no message.
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

-- Where a running operation is: "uriEndpoint changed: Update (3/6)".
local function operation_progress(op)
  if op == nil or op.steps == nil then
    return nil
  end
  local total = #op.steps
  for i, step in ipairs(op.steps) do
    if step.state == "Running" or step.state == "Pending" then
      local text = (op.trigger or "operation") .. ": " .. step.name .. " (" .. i .. "/" .. total .. ")"
      if step.message ~= nil and step.message ~= "" then
        text = text .. " - " .. step.message
      end
      return text
    end
  end
  return nil
end

local spec = obj.spec or {}
local meta = obj.metadata or {}
local status = obj.status

if spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Reconciliation is suspended (spec.suspend: true)"
  return hs
end

if meta.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted (deletionPolicy " .. (spec.deletionPolicy or "Retain") .. ")"
  return hs
end

if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = meta.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  local code = status.connectionErrorCode
  if code ~= nil and code ~= "" and not string.find(hs.message, code, 1, true) then
    hs.message = hs.message .. " (ConnectionErrorCode " .. code .. ")"
  end
  return hs
end

local op = status.operation
if op ~= nil and op.phase == "AwaitingApproval" then
  hs.status = "Progressing"
  local why = op.message
  if why == nil or why == "" then
    why = op.trigger or "a disruptive change"
  end
  hs.message = "Awaiting approval: " .. why
  if not string.find(why, "xks-operator.io/approve-generation", 1, true) then
    hs.message = hs.message .. ". Approve with the annotation xks-operator.io/approve-generation: \"" ..
      (op.generation or generation or "<generation>") .. "\""
  end
  return hs
end

local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = operation_progress(op) or describe(reconciling, "Reconciling")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  if ready.observedGeneration == nil or generation == nil or ready.observedGeneration == generation then
    hs.status = "Healthy"
    hs.message = describe(ready, "Ready")
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Ready describes generation " .. ready.observedGeneration .. ", not " .. generation
  return hs
end

if status.connectionState == "FAILED" then
  hs.status = "Degraded"
  hs.message = describe(ready, "The store is FAILED")
  local code = status.connectionErrorCode
  if code ~= nil and code ~= "" and not string.find(hs.message, code, 1, true) then
    hs.message = hs.message .. " (ConnectionErrorCode " .. code .. ")"
  end
  return hs
end

-- ObserveOnly found drift: the operator deliberately changes nothing until a
-- person switches managementPolicy to Full.
if spec.managementPolicy == "ObserveOnly" and op ~= nil and op.phase == "Planned" then
  hs.status = "Suspended"
  hs.message = describe(ready, "ObserveOnly: changes planned, none made")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition")
return hs
