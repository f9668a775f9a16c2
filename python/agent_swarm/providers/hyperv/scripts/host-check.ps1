<#
.SYNOPSIS
What agent-swarm needs to know about this Windows host, gathered without changing anything.

.DESCRIPTION
Never fails as a whole: each fact is gathered on its own, and what could not be read is null
(with the reason in "errors"). The checks themselves are made in Python
(agent_swarm/providers/hyperv/probe.py), from this answer.

Answer: {windows: {product, edition, build, ubr, display_version, installation_type},
rights: {user, elevated, hyperv_admin}, hypervisor_present, virtualization_firmware,
vmms: {status} | null, module: {version} | null, feature: state | null,
switch: {found, type} | null, filesystem: {root, format} | null, powershell, errors: [...]}.
#>
[CmdletBinding()]
param(
    [string]$StatePath = '',
    [Parameter(Mandatory = $true)][string]$SwitchName
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    $errors = @()
    $facts = [ordered]@{
        windows = $null; rights = $null; hypervisor_present = $null; virtualization_firmware = $null
        vmms = $null; module = $null; feature = $null; switch = $null; filesystem = $null
        powershell = [string]$PSVersionTable.PSVersion
    }
    try {
        $current = Get-ItemProperty -LiteralPath 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
        $facts['windows'] = [ordered]@{
            product = [string](Get-AgentSwarmValue -Object $current -Name 'ProductName')
            edition = [string](Get-AgentSwarmValue -Object $current -Name 'EditionID')
            build = [string](Get-AgentSwarmValue -Object $current -Name 'CurrentBuild')
            ubr = [string](Get-AgentSwarmValue -Object $current -Name 'UBR')
            display_version = [string](Get-AgentSwarmValue -Object $current -Name 'DisplayVersion')
            installation_type = [string](Get-AgentSwarmValue -Object $current -Name 'InstallationType')
        }
    } catch {
        $errors += "windows: $($_.Exception.Message)"
    }
    try {
        $facts['rights'] = Test-AgentSwarmRights
    } catch {
        $errors += "rights: $($_.Exception.Message)"
    }
    try {
        $system = Get-CimInstance -ClassName 'Win32_ComputerSystem'
        $facts['hypervisor_present'] = Get-AgentSwarmValue -Object $system -Name 'HypervisorPresent'
        $processor = @(Get-CimInstance -ClassName 'Win32_Processor')[0]
        $facts['virtualization_firmware'] = Get-AgentSwarmValue -Object $processor -Name 'VirtualizationFirmwareEnabled'
    } catch {
        $errors += "hypervisor: $($_.Exception.Message)"
    }
    $service = @(Get-Service -Name 'vmms' -ErrorAction SilentlyContinue)
    if ($service.Count -gt 0) {
        $facts['vmms'] = [ordered]@{ status = [string]$service[0].Status }
    }
    $modules = @(Get-Module -ListAvailable -Name 'Hyper-V' | Sort-Object -Property Version -Descending)
    if ($modules.Count -gt 0) {
        $facts['module'] = [ordered]@{ version = [string]$modules[0].Version }
    }
    $rights = $facts['rights']
    if ($null -ne $rights -and $rights.elevated) {
        # Reading optional features needs an elevated session.
        try {
            $feature = @(Get-WindowsOptionalFeature -Online -FeatureName 'Microsoft-Hyper-V-All')
            if ($feature.Count -gt 0) {
                $facts['feature'] = [string]$feature[0].State
            }
        } catch {
            $errors += "feature: $($_.Exception.Message)"
        }
    }
    $canAsk = $null -ne $rights -and ($rights.elevated -or $rights.hyperv_admin) -and $null -ne $facts['vmms'] -and $facts['vmms'].status -eq 'Running' -and $null -ne $facts['module']
    if ($canAsk) {
        try {
            $switches = @(Get-VMSwitch -Name $SwitchName -ErrorAction SilentlyContinue)
            $facts['switch'] = [ordered]@{ found = ($switches.Count -gt 0); type = '' }
            if ($switches.Count -gt 0) {
                $facts['switch']['type'] = [string]$switches[0].SwitchType
            }
        } catch {
            $errors += "switch: $($_.Exception.Message)"
        }
    }
    if ($StatePath -ne '') {
        try {
            $root = [System.IO.Path]::GetPathRoot($StatePath)
            $facts['filesystem'] = [ordered]@{ root = $root; format = [System.IO.DriveInfo]::new($root).DriveFormat }
        } catch {
            $errors += "filesystem: $($_.Exception.Message)"
        }
    }
    $facts['errors'] = $errors
    return $facts
}
