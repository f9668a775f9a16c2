<#
.SYNOPSIS
Stops one agent-swarm VM: a shutdown through the guest, turned off after TimeoutSeconds.

.DESCRIPTION
Stop-VM asks the guest's shutdown integration service and waits with no time limit, so it runs
as a job that is waited for TimeoutSeconds; a guest that did not go off by then (or has no such
service: Stop-VM fails at once) is turned off. -Force (or a paused VM) turns it off at once. A
VM that is off or saved is left as it is.

Answer: {state, was, forced}.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][ValidateRange(0, 86400)][int]$TimeoutSeconds,
    [switch]$Force
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    $vm = Get-AgentSwarmVM -Name $Name
    $was = [string]$vm.State
    if ($was -in @('Off', 'Saved')) {
        return [ordered]@{ state = $was; was = $was; forced = $false }
    }
    $forced = $true
    if (-not $Force -and $was -eq 'Running' -and $TimeoutSeconds -gt 0) {
        $job = Stop-VM -VM $vm -Force -AsJob
        $null = Wait-Job -Job $job -Timeout $TimeoutSeconds
        Remove-Job -Job $job -Force
        $vm = Get-AgentSwarmVM -Name $Name
        if ([string]$vm.State -eq 'Off') {
            $forced = $false
        }
    }
    if ([string]$vm.State -ne 'Off') {
        Stop-VM -VM $vm -TurnOff -Force -Confirm:$false
        $vm = Get-AgentSwarmVM -Name $Name
    }
    return [ordered]@{ state = [string]$vm.State; was = $was; forced = $forced }
}
