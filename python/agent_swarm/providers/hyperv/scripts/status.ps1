<#
.SYNOPSIS
The state of one agent-swarm VM, its notes (the owner record) and its network adapter.

Answer: {found: false} or {found, name, id, state, status, notes, switch, adapters,
checkpoints}; switch is '' when the adapter is connected to none.
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
        return [ordered]@{ found = $false }
    }
    $facts = Get-AgentSwarmVMFacts -VM $vm
    $adapters = @(Get-VMNetworkAdapter -VM $vm)
    $facts['switch'] = ''
    if ($adapters.Count -gt 0) {
        $facts['switch'] = [string]$adapters[0].SwitchName
    }
    $facts['adapters'] = $adapters.Count
    $facts['checkpoints'] = @(Get-AgentSwarmCheckpoints -VM $vm).Count
    $facts['found'] = $true
    return $facts
}
