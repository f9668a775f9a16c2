<#
.SYNOPSIS
Makes a standard checkpoint of one agent-swarm VM.

.DESCRIPTION
Standard, not production, checkpoints (define.ps1 sets the VM's type): of a running VM it holds
the memory and device state too (restored, the VM runs on from that moment), and it needs
nothing in the guest. A production checkpoint needs the guest's VSS / fsfreeze daemon
(hyperv-daemons), holds no memory, and restores to a VM that is off. Names are unique per VM.

Answer: {id, name, created_ms, vm_state} (vm_state: the VM's state when it was taken).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][ValidatePattern('^[a-z0-9][a-z0-9-]{0,62}$')][string]$Checkpoint
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    $vm = Get-AgentSwarmVM -Name $Name
    if (@(Get-AgentSwarmCheckpoints -VM $vm | Where-Object { $_.Name -eq $Checkpoint }).Count -gt 0) {
        Stop-AgentSwarm -Category 'exists' -Message "$Name already has a checkpoint named $Checkpoint"
    }
    $state = [string]$vm.State
    if ($state -notin @('Off', 'Saved', 'Running', 'Paused')) {
        Stop-AgentSwarm -Category 'invalid-state' -Message "$Name is $state; try again once it is off or running"
    }
    Checkpoint-VM -VM $vm -SnapshotName $Checkpoint
    $made = @(Get-AgentSwarmCheckpoints -VM $vm | Where-Object { $_.Name -eq $Checkpoint })
    if ($made.Count -ne 1) {
        Stop-AgentSwarm -Category 'other' -Message "the checkpoint $Checkpoint of $Name was not found after it was made"
    }
    return [ordered]@{
        id = [string]$made[0].Id
        name = [string]$made[0].Name
        created_ms = (ConvertTo-AgentSwarmEpochMs -Time $made[0].CreationTime)
        vm_state = $state
    }
}
