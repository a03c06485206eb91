-- Argo CD health check for ckb.dev/ConfidentialKeyBinding.
--
-- Install it as the argocd-cm key
--   resource.customizations.health.ckb.dev_ConfidentialKeyBinding
-- (see docs/gitops.md). It reads the conditions ckb-operator writes:
--   Stalled=True      -> Degraded     (needs a human: vault not allowed, key not owned, ...)
--   Reconciling=True  -> Progressing  (retrying, or waiting for the policy ConfigMap)
--   Ready=True        -> Healthy
-- and says Progressing until the operator has observed the binding's current generation.
-- It uses only what Argo CD opens for health scripts (base and table libraries).
local hs = {}
hs.status = "Progressing"
hs.message = "waiting for ckb-operator to report on this binding"

if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "ckb-operator has not yet observed generation " .. tostring(generation)
  return hs
end

local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  conditions[c.type] = c
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
  return hs
end

local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "key ready"
  local uninjected = obj.status.uninjectedPods
  if uninjected ~= nil and uninjected > 0 then
    hs.message = "key ready; " .. tostring(uninjected) ..
      " matching pod(s) run without the sidecar: restart their workload"
  end
  return hs
end

if ready ~= nil then
  hs.message = describe(ready)
end
return hs
