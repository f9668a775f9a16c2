<#
.SYNOPSIS
The checkpoints of one agent-swarm VM, oldest first.

Answer: {checkpoints: [{id, name, created_ms, type}, ...]}.
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
    $vm = Get-AgentSwarmVM -Name $Name
    $list = @(Get-AgentSwarmCheckpoints -VM $vm | ForEach-Object {
            [ordered]@{
                id = [string]$_.Id
                name = [string]$_.Name
                created_ms = (ConvertTo-AgentSwarmEpochMs -Time $_.CreationTime)
                type = [string]$_.SnapshotType
            }
        })
    return [ordered]@{ checkpoints = $list }
}
