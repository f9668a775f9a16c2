<#
.SYNOPSIS
Every VM whose name starts with Prefix (one state directory's), in one call.

Answer: {vms: [{name, id, state, status, notes}, ...]}.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][ValidatePattern('^agent-swarm-[0-9a-f]{6}-$')][string]$Prefix
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    $vms = @(Get-VM -Name "$Prefix*" | Where-Object {
            $_.Name.StartsWith($Prefix, [System.StringComparison]::OrdinalIgnoreCase)
        } | ForEach-Object { Get-AgentSwarmVMFacts -VM $_ })
    return [ordered]@{ vms = $vms }
}
