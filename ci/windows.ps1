<#
.SYNOPSIS
Windows CI (.github/workflows/windows.yml runs it; it also runs as is on a developer's PC).

.DESCRIPTION
1. builds and installs agent-swarm with its test extra into a venv (a real, non-editable
   install: the tests import what users get, the shipped PowerShell scripts included)
2. runs the Hyper-V tests that need no VM: the scripts' checks (parse, cmdlet allow-list,
   parameters) and the provider contract against the fake PowerShell
3. when this host can run Hyper-V VMs (Hyper-V enabled and running, the hypervisor present,
   this user in Hyper-V Administrators or elevated, the VM switch present): converts an Ubuntu
   cloud image to VHDX once and runs the provider contract against real Hyper-V. GitHub's
   hosted Windows runners have no Hyper-V (no nested virtualization, no restart to enable
   it): there this step reports "skipped" and the job still passes; a self-hosted Windows
   10/11 Pro machine with Hyper-V runs it.

Environment (all optional):
  PYTHON                     interpreter for the venv (default: python on PATH)
  AGENT_SWARM_VENV           venv directory (default: build\windows-venv in the checkout)
  AGENT_SWARM_CI_CACHE       downloads and converted images (default: %LOCALAPPDATA%\agent-swarm\ci)
  UBUNTU_RELEASE             Ubuntu cloud image release (default: 24.04)
  AGENT_SWARM_HYPERV_SWITCH  the VM switch (default: "Default Switch")
#>
[CmdletBinding()]
param()
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'  # Invoke-WebRequest is many times slower with it

$Repo = Split-Path -Path $PSScriptRoot -Parent

function Get-Setting {
    param([Parameter(Mandatory = $true)][string]$Name, [Parameter(Mandatory = $true)][string]$Default)
    $value = [System.Environment]::GetEnvironmentVariable($Name)
    if ([string]::IsNullOrEmpty($value)) {
        return $Default
    }
    return $value
}

function Write-Step {
    param([Parameter(Mandatory = $true)][string]$Message)
    Write-Host "==> $Message"
}

function Write-Notice {
    # A line in the log, and under GitHub Actions an annotation and a line in the job summary.
    param([Parameter(Mandatory = $true)][string]$Message)
    Write-Host $Message
    if ($env:GITHUB_ACTIONS -eq 'true') {
        Write-Host "::notice::$Message"
        if (-not [string]::IsNullOrEmpty($env:GITHUB_STEP_SUMMARY)) {
            Add-Content -LiteralPath $env:GITHUB_STEP_SUMMARY -Value $Message
        }
    }
}

function Invoke-Checked {
    # Runs a program; a non-zero exit status stops the script (PowerShell does not).
    param(
        [Parameter(Mandatory = $true)][string]$FilePath,
        [string[]]$ArgumentList = @()
    )
    & $FilePath @ArgumentList
    if ($LASTEXITCODE -ne 0) {
        throw "$FilePath $($ArgumentList -join ' ') failed with exit status $LASTEXITCODE"
    }
}

function Get-HyperVReadiness {
    # Why real Hyper-V VMs cannot run here, or '' when they can.
    $identity = [System.Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = [System.Security.Principal.WindowsPrincipal]::new($identity)
    $elevated = $principal.IsInRole([System.Security.Principal.WindowsBuiltInRole]::Administrator)
    $member = $principal.IsInRole([System.Security.Principal.SecurityIdentifier]::new('S-1-5-32-578'))
    if (-not ($elevated -or $member)) {
        return "$($identity.Name) is not in Hyper-V Administrators and not elevated"
    }
    $service = @(Get-Service -Name 'vmms' -ErrorAction SilentlyContinue)
    if ($service.Count -eq 0) {
        return 'Hyper-V is not enabled (no vmms service)'
    }
    if ([string]$service[0].Status -ne 'Running') {
        return "the vmms service is $([string]$service[0].Status)"
    }
    $system = Get-CimInstance -ClassName 'Win32_ComputerSystem'
    if (-not $system.HypervisorPresent) {
        return 'no hypervisor is running (no nested virtualization on this runner?)'
    }
    if ($null -eq (Get-Command -Name 'Get-VM' -ErrorAction SilentlyContinue)) {
        return 'the Hyper-V PowerShell module is missing'
    }
    if (@(Get-VMSwitch -Name $script:Switch -ErrorAction SilentlyContinue).Count -eq 0) {
        return "there is no VM switch named '$script:Switch'"
    }
    return ''
}

if ([System.Environment]::OSVersion.Platform -ne [System.PlatformID]::Win32NT) {
    [Console]::Error.WriteLine("error: ci/windows.ps1 runs on Windows (this is $([System.Environment]::OSVersion.Platform))")
    exit 1
}
$Python = Get-Setting -Name 'PYTHON' -Default 'python'
$Venv = Get-Setting -Name 'AGENT_SWARM_VENV' -Default (Join-Path -Path $Repo -ChildPath 'build\windows-venv')
$Cache = Get-Setting -Name 'AGENT_SWARM_CI_CACHE' -Default (Join-Path -Path $env:LOCALAPPDATA -ChildPath 'agent-swarm\ci')
$UbuntuRelease = Get-Setting -Name 'UBUNTU_RELEASE' -Default '24.04'
$script:Switch = Get-Setting -Name 'AGENT_SWARM_HYPERV_SWITCH' -Default 'Default Switch'
$ImageBaseUrl = "https://cloud-images.ubuntu.com/releases/$UbuntuRelease/release"
Set-Location -LiteralPath $Repo
Write-Step "Windows $([System.Environment]::OSVersion.Version), PowerShell $($PSVersionTable.PSVersion)"

# ---- 1. venv + a real (non-editable) install -------------------------------------------------
$VenvPython = Join-Path -Path $Venv -ChildPath 'Scripts\python.exe'
if (-not (Test-Path -LiteralPath $VenvPython -PathType Leaf)) {
    Write-Step "creating virtualenv $Venv"
    Invoke-Checked -FilePath $Python -ArgumentList @('-m', 'venv', $Venv)
}
Invoke-Checked -FilePath $VenvPython -ArgumentList @('-m', 'pip', 'install', '-q', '--disable-pip-version-check', '-U', 'pip')
Write-Step 'building and installing agent-swarm[test]'
Invoke-Checked -FilePath $VenvPython -ArgumentList @('-m', 'pip', 'install', '--disable-pip-version-check', "$Repo[test]")

# The installed package must carry its PowerShell scripts (package data). The checkout's
# sources are under python\, so this imports the installed package, not the checkout.
$scriptsDir = (& $VenvPython -c 'import pathlib, agent_swarm.providers.hyperv.runner as r; print(r.SCRIPTS_DIR)').Trim()
if ($LASTEXITCODE -ne 0 -or -not (Test-Path -LiteralPath (Join-Path -Path $scriptsDir -ChildPath 'define.ps1') -PathType Leaf)) {
    throw "the installed agent-swarm has no Hyper-V scripts in '$scriptsDir'"
}
Write-Step "scripts: $scriptsDir"

# qemu-img: agent-swarm converts base images to VHDX with it, and the tests write the VM disks'
# VHDX base with it (they skip without it).
$QemuImg = Get-Command -Name 'qemu-img' -ErrorAction SilentlyContinue
if ($null -eq $QemuImg) {
    $qemuDir = Join-Path -Path $env:ProgramFiles -ChildPath 'qemu'
    if (-not (Test-Path -LiteralPath (Join-Path -Path $qemuDir -ChildPath 'qemu-img.exe') -PathType Leaf)) {
        Write-Step 'choco install qemu (for qemu-img)'
        Invoke-Checked -FilePath 'choco' -ArgumentList @('install', 'qemu', '-y', '--no-progress')
    }
    $env:PATH = "$qemuDir;$env:PATH"
    $QemuImgPath = Join-Path -Path $qemuDir -ChildPath 'qemu-img.exe'
} else {
    $QemuImgPath = $QemuImg.Source
}
Write-Step "qemu-img: $QemuImgPath"

# ---- 2. tests that need no VM ----------------------------------------------------------------
Write-Step 'pytest: Hyper-V scripts, runner, probe and the contract against the fake PowerShell'
Invoke-Checked -FilePath $VenvPython -ArgumentList @('-m', 'pytest', 'tests/unit/test_hyperv_scripts.py', 'tests/unit/test_hyperv_runner.py', 'tests/unit/test_hyperv_probe.py', 'tests/providers/test_hyperv_contract.py', '-m', 'not integration and not root')

# ---- 3. real Hyper-V VMs, where this host can run them ---------------------------------------
$why = Get-HyperVReadiness
if ($why -ne '') {
    Write-Notice "skipped: Hyper-V not usable on this runner ($why)"
    exit 0
}
$null = New-Item -ItemType Directory -Path $Cache -Force
$imageName = "ubuntu-$UbuntuRelease-server-cloudimg-amd64.img"
$image = Join-Path -Path $Cache -ChildPath $imageName
$vhdx = Join-Path -Path $Cache -ChildPath ($imageName -replace '\.img$', '.vhdx')
$sums = Join-Path -Path $Cache -ChildPath 'SHA256SUMS'
Write-Step "Ubuntu $UbuntuRelease cloud image"
Invoke-WebRequest -Uri "$ImageBaseUrl/SHA256SUMS" -OutFile $sums -UseBasicParsing
$wanted = ''
foreach ($line in Get-Content -LiteralPath $sums) {
    $fields = $line -split '\s+'
    if ($fields.Count -ge 2 -and $fields[1].TrimStart('*') -eq $imageName) {
        $wanted = $fields[0].ToLowerInvariant()
    }
}
if ($wanted -eq '') {
    throw "$imageName is not listed in $ImageBaseUrl/SHA256SUMS"
}
$have = ''
if (Test-Path -LiteralPath $image -PathType Leaf) {
    $have = (Get-FileHash -LiteralPath $image -Algorithm SHA256).Hash.ToLowerInvariant()
}
if ($have -ne $wanted) {
    Write-Step "downloading $ImageBaseUrl/$imageName"
    Remove-Item -LiteralPath $vhdx -Force -ErrorAction SilentlyContinue
    Invoke-WebRequest -Uri "$ImageBaseUrl/$imageName" -OutFile "$image.part" -UseBasicParsing
    if ((Get-FileHash -LiteralPath "$image.part" -Algorithm SHA256).Hash.ToLowerInvariant() -ne $wanted) {
        throw "checksum mismatch for $imageName"
    }
    Move-Item -LiteralPath "$image.part" -Destination $image -Force
}
# Hyper-V attaches VHDX: convert once to a dynamic VHDX, then every VM of the contract gets a
# differencing disk on it, written natively (agent_swarm.native), as agent-swarm does.
if (-not (Test-Path -LiteralPath $vhdx -PathType Leaf)) {
    Write-Step 'qemu-img convert -> dynamic VHDX (10G)'
    Invoke-Checked -FilePath $QemuImgPath -ArgumentList @('convert', '-O', 'vhdx', '-o', 'subformat=dynamic', $image, "$vhdx.part.vhdx")
    Invoke-Checked -FilePath $QemuImgPath -ArgumentList @('resize', '-f', 'vhdx', "$vhdx.part.vhdx", '10G')
    Move-Item -LiteralPath "$vhdx.part.vhdx" -Destination $vhdx -Force
}

Write-Step 'pytest tests/providers/test_hyperv_contract.py (real Hyper-V)'
$env:AGENT_SWARM_HYPERV_REAL = '1'
$env:AGENT_SWARM_HYPERV_IMAGE = $vhdx
Invoke-Checked -FilePath $VenvPython -ArgumentList @('-m', 'pytest', 'tests/providers/test_hyperv_contract.py')
Write-Notice "real Hyper-V contract passed on Windows $([System.Environment]::OSVersion.Version)"
