-- agent-swarm registry, schema version 3: guest network isolation.
-- host_access = 1: the VM's user-mode network maps its gateway to this host's loopback (the
-- old behaviour: host services and sibling VMs' forwarded ports are reachable from the guest).
-- 0 (the default): the guest reaches the outside world only. Fixed when the VM is created
-- (it is part of the VM's definition); a task takes its project's unless told otherwise.
ALTER TABLE projects ADD COLUMN host_access INTEGER NOT NULL DEFAULT 0 CHECK (host_access IN (0, 1));
ALTER TABLE tasks ADD COLUMN host_access INTEGER NOT NULL DEFAULT 0 CHECK (host_access IN (0, 1));
