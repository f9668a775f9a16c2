-- agent-swarm registry, schema version 3: guest network isolation.
-- host_access = 1: the VM's user-mode network maps its gateway to this host's loopback (QEMU's
-- user network: host services and sibling VMs' forwarded ports are reachable from the guest).
-- 0 (the default for new VMs): an isolated network (passt), the outside world only.
-- Fixed when the VM is defined. Rows that exist already were defined with QEMU's user network,
-- so they keep host access (their libvirt definitions say so); recreate them to isolate them.
ALTER TABLE projects ADD COLUMN host_access INTEGER NOT NULL DEFAULT 0 CHECK (host_access IN (0, 1));
ALTER TABLE tasks ADD COLUMN host_access INTEGER NOT NULL DEFAULT 0 CHECK (host_access IN (0, 1));
UPDATE projects SET host_access = 1;
UPDATE tasks SET host_access = 1;
