<#
.SYNOPSIS
Starts one agent-swarm VM; on a running one, repairs what status.ps1 reports.

.DESCRIPTION
Off: the disk (unless the VM has checkpoints) and the seed are attached again first, so that
Hyper-V grants the VM access to files replaced at the same paths (a sealed project's new disk,
a rewritten seed). Saved: starting resumes it. Paused: resumed. Running: only repaired. The
network adapter is connected to the switch again when it is not (status.ps1's "switch").

Answer: {state, was, repaired: [...]}.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][string]$Disk,
    [Parameter(Mandatory = $true)][string]$Seed,
    [Parameter(Mandatory = $true)][string]$SwitchName
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    $vm = Get-AgentSwarmVM -Name $Name
    $was = [string]$vm.State
    $repaired = @()
    if ($was -notin @('Off', 'Saved', 'Paused', 'Running')) {
        Stop-AgentSwarm -Category 'invalid-state' -Message "$Name is $was ($([string]$vm.Status)); try again once it is off or running"
    }
    if ($was -eq 'Off') {
        if (@(Get-AgentSwarmCheckpoints -VM $vm).Count -eq 0) {
            $drives = @(Get-VMHardDiskDrive -VM $vm)
            if ($drives.Count -gt 0) {
                Set-VMHardDiskDrive -VMHardDiskDrive $drives[0] -Path $Disk
            }
        }
        $dvds = @(Get-VMDvdDrive -VM $vm)
        if ($dvds.Count -gt 0) {
            Set-VMDvdDrive -VMDvdDrive $dvds[0] -Path $Seed
        }
    }
    $adapters = @(Get-VMNetworkAdapter -VM $vm)
    if ($adapters.Count -gt 0 -and [string]$adapters[0].SwitchName -ne $SwitchName) {
        Connect-VMNetworkAdapter -VMNetworkAdapter $adapters[0] -SwitchName $SwitchName
        $repaired += 'network'
    }
    if ($was -eq 'Paused') {
        Resume-VM -VM $vm
    } elseif ($was -ne 'Running') {
        Start-VM -VM $vm
    }
    $vm = Get-AgentSwarmVM -Name $Name
    return [ordered]@{ state = [string]$vm.State; was = $was; repaired = $repaired }
}
