<#
.SYNOPSIS
Defines one agent-swarm VM, or updates it: idempotent.

.DESCRIPTION
Generation 2; Secure Boot with the "Microsoft UEFI Certificate Authority" template (the one
that trusts the shims Linux distributions sign); the VM's disk (a differencing VHDX written by
agent-swarm) on SCSI 0:0 as the first boot device; the cloud-init seed ISO on a SCSI DVD
drive; one network adapter on the switch; static memory; standard checkpoints and no automatic
ones; left off when Windows stops (saved). Its configuration lives under ConfigPath.

A VM of that name that is off is updated to match; one that runs only gets its notes (Hyper-V
changes processors and static memory of a VM that is off). The disk is not re-pointed while
the VM has checkpoints: its current disk is then the newest checkpoint's .avhdx.

Answer: {created, updated, state, id}.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Name,
    [Parameter(Mandatory = $true)][string]$Notes,
    [Parameter(Mandatory = $true)][string]$Disk,
    [Parameter(Mandatory = $true)][string]$Seed,
    [Parameter(Mandatory = $true)][ValidateRange(1, 1024)][int]$Cpus,
    [Parameter(Mandatory = $true)][ValidateRange(32, 16777216)][int]$MemoryMiB,
    [Parameter(Mandatory = $true)][string]$SwitchName,
    [Parameter(Mandatory = $true)][string]$ConfigPath
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')

Invoke-AgentSwarm {
    Assert-AgentSwarmHost
    foreach ($file in @($Disk, $Seed)) {
        if (-not (Test-Path -LiteralPath $file -PathType Leaf)) {
            Stop-AgentSwarm -Category 'other' -Message "$file does not exist"
        }
    }
    if (@(Get-VMSwitch -Name $SwitchName -ErrorAction SilentlyContinue).Count -eq 0) {
        Stop-AgentSwarm -Category 'switch-missing' -Message "Hyper-V has no virtual switch named '$SwitchName'"
    }
    $memory = [int64]$MemoryMiB * 1048576
    $vm = Get-AgentSwarmVM -Name $Name -AllowMissing
    $created = $false
    if ($null -eq $vm) {
        $vm = New-VM -Name $Name -Generation 2 -MemoryStartupBytes $memory -VHDPath $Disk -SwitchName $SwitchName -Path $ConfigPath
        $created = $true
    }
    if ([string]$vm.State -ne 'Off') {
        Set-VM -VM $vm -Notes $Notes
        return [ordered]@{ created = $created; updated = $false; state = [string]$vm.State; id = [string]$vm.Id }
    }
    Set-VM -VM $vm -ProcessorCount $Cpus -StaticMemory -MemoryStartupBytes $memory -Notes $Notes -CheckpointType Standard -AutomaticCheckpointsEnabled $false -AutomaticStartAction Nothing -AutomaticStopAction Save

    $drives = @(Get-VMHardDiskDrive -VM $vm)
    if ($drives.Count -eq 0) {
        Add-VMHardDiskDrive -VM $vm -Path $Disk
    } elseif (@(Get-AgentSwarmCheckpoints -VM $vm).Count -eq 0) {
        # Also when the path is the same: Hyper-V then grants the VM access to the file again
        # (a disk replaced at the same path, as sealing a project does, has lost that grant).
        Set-VMHardDiskDrive -VMHardDiskDrive $drives[0] -Path $Disk
    }
    $dvds = @(Get-VMDvdDrive -VM $vm)
    if ($dvds.Count -eq 0) {
        Add-VMDvdDrive -VM $vm -Path $Seed
    } else {
        Set-VMDvdDrive -VMDvdDrive $dvds[0] -Path $Seed
    }
    $adapters = @(Get-VMNetworkAdapter -VM $vm)
    if ($adapters.Count -eq 0) {
        Add-VMNetworkAdapter -VM $vm -SwitchName $SwitchName
    } elseif ([string]$adapters[0].SwitchName -ne $SwitchName) {
        Connect-VMNetworkAdapter -VMNetworkAdapter $adapters[0] -SwitchName $SwitchName
    }
    $boot = @(Get-VMHardDiskDrive -VM $vm)[0]
    Set-VMFirmware -VM $vm -EnableSecureBoot On -SecureBootTemplate 'MicrosoftUEFICertificateAuthority' -FirstBootDevice $boot
    return [ordered]@{ created = $created; updated = $true; state = [string]$vm.State; id = [string]$vm.Id }
}
