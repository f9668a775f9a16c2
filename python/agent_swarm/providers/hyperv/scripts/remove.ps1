<#
.SYNOPSIS
Removes one agent-swarm VM with its checkpoints and saved state; a VM that is gone is success.

.DESCRIPTION
A running VM is turned off first. Remove-VM deletes the VM's configuration, checkpoints and
saved state but no disk: the VM's disk, the checkpoints' .avhdx files next to it and the seed
are agent-swarm's files, removed with the VM's directory.

Answer: {removed, path} (path: where its configuration was, for agent-swarm to tidy up).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Name
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    $vm = Get-AgentSwarmVM -Name $Name -AllowMissing
    if ($null -eq $vm) {
        return [ordered]@{ removed = $false; path = $null }
    }
    $path = [string]$vm.Path
    if ([string]$vm.State -notin @('Off', 'Saved')) {
        Stop-VM -VM $vm -TurnOff -Force -Confirm:$false
    }
    Remove-VM -VM $vm -Force
    return [ordered]@{ removed = $true; path = $path }
}
