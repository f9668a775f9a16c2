<#
.SYNOPSIS
Restores one agent-swarm VM to a checkpoint.

.DESCRIPTION
The VM is turned off (or its saved state dropped) first. Applying a standard checkpoint of a
running VM leaves it saved; -Start then resumes it (and -Pause pauses it again, for a
checkpoint taken while paused). Without -Start it stays as the checkpoint left it.

Answer: {state}.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][ValidatePattern('^[a-z0-9][a-z0-9-]{0,62}$')][string]$Checkpoint,
    [switch]$Start,
    [switch]$Pause
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    $vm = Get-AgentSwarmVM -Name $Name
    $matching = @(Get-AgentSwarmCheckpoints -VM $vm | Where-Object { $_.Name -eq $Checkpoint })
    if ($matching.Count -eq 0) {
        Stop-AgentSwarm -Category 'checkpoint-not-found' -Message "$Name has no checkpoint named $Checkpoint"
    }
    if ($matching.Count -gt 1) {
        Stop-AgentSwarm -Category 'ambiguous' -Message "$Name has $($matching.Count) checkpoints named $Checkpoint"
    }
    $state = [string]$vm.State
    if ($state -eq 'Saved') {
        Remove-VMSavedState -VM $vm
    } elseif ($state -ne 'Off') {
        Stop-VM -VM $vm -TurnOff -Force -Confirm:$false
    }
    Restore-VMSnapshot -VMSnapshot $matching[0] -Confirm:$false
    $vm = Get-AgentSwarmVM -Name $Name
    if ($Start -and [string]$vm.State -eq 'Saved') {
        Start-VM -VM $vm
        if ($Pause) {
            Suspend-VM -VM $vm
        }
        $vm = Get-AgentSwarmVM -Name $Name
    }
    return [ordered]@{ state = [string]$vm.State }
}
