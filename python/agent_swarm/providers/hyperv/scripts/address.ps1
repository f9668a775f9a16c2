<#
.SYNOPSIS
The IPv4 addresses one running agent-swarm VM may have, from two sources.

.DESCRIPTION
kvp: the addresses the guest reports through the Key-Value Pair Exchange integration service
(Get-VMNetworkAdapter's IPAddresses; needs hv_kvp_daemon, from hyperv-daemons, in the guest).
neighbors: without that daemon, the host's neighbour (ARP) cache on the switch's host interface
"vEthernet (<switch>)" for the adapter's MAC address; the guest is in it once it has talked to
the host (DHCP, DNS through the switch's NAT). agent-swarm picks one (kvp first).

Answer: {state, mac, kvp: [...], neighbors: [...]}.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][string]$SwitchName
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    $vm = Get-AgentSwarmVM -Name $Name
    $state = [string]$vm.State
    $adapters = @(Get-VMNetworkAdapter -VM $vm)
    $answer = [ordered]@{ state = $state; mac = ''; kvp = @(); neighbors = @() }
    if ($state -ne 'Running' -or $adapters.Count -eq 0) {
        return $answer
    }
    $mac = [string]$adapters[0].MacAddress
    $answer['mac'] = $mac
    $answer['kvp'] = @(@($adapters[0].IPAddresses) | Where-Object { [string]$_ -match '^\d{1,3}(\.\d{1,3}){3}$' } | ForEach-Object { [string]$_ })
    if ($answer['kvp'].Count -gt 0 -or $mac -notmatch '^[0-9A-Fa-f]{12}$') {
        return $answer
    }
    $dashed = ($mac -replace '(..)(?!$)', '$1-').ToUpperInvariant()
    $answer['neighbors'] = @(Get-NetNeighbor -InterfaceAlias "vEthernet ($SwitchName)" -AddressFamily IPv4 -LinkLayerAddress $dashed -ErrorAction SilentlyContinue | Where-Object {
            [string]$_.State -notin @('Unreachable', 'Incomplete')
        } | ForEach-Object { [string]$_.IPAddress })
    return $answer
}
