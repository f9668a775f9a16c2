# Shared by every agent-swarm Hyper-V script. Each one dot-sources it right after its param()
# block, Set-StrictMode and $ErrorActionPreference:
#
#     . (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')
#
# It only defines functions. The answer protocol (agent_swarm/providers/hyperv/runner.py reads
# it): exactly one JSON document on stdout, alone between the two lines
#
#     <<<AGENT-SWARM-JSON
#     {"ok":true,"result":{...}}   or   {"ok":false,"error":{"category":"...","message":"..."}}
#     AGENT-SWARM-JSON>>>
#
# written by Invoke-AgentSwarm; whatever else reaches stdout (a host's warnings) is ignored.
# Characters outside ASCII are escaped as \uXXXX, so the answer survives any console code
# page. Error categories: not-elevated, hyperv-missing, service-stopped, module-missing,
# switch-missing, not-found, checkpoint-not-found, exists, invalid-state, ambiguous,
# access-denied, other.

function Stop-AgentSwarm {
    # Stops the script with an error of this category (what the scripts detect themselves).
    param(
        [Parameter(Mandatory = $true)][string]$Category,
        [Parameter(Mandatory = $true)][string]$Message
    )
    $exception = [System.InvalidOperationException]::new($Message)
    $exception.Data['AgentSwarmCategory'] = $Category
    throw $exception
}

function ConvertTo-AgentSwarmAscii {
    param([Parameter(Mandatory = $true)][AllowEmptyString()][string]$Text)
    $builder = [System.Text.StringBuilder]::new($Text.Length)
    foreach ($character in $Text.ToCharArray()) {
        $code = [int]$character
        if ($code -lt 128) {
            $null = $builder.Append($character)
        } else {
            $null = $builder.Append('\u').Append($code.ToString('x4'))
        }
    }
    return $builder.ToString()
}

function Write-AgentSwarmFrame {
    param([Parameter(Mandatory = $true)][System.Collections.IDictionary]$Answer)
    $json = ConvertTo-Json -InputObject $Answer -Depth 8 -Compress
    $text = ConvertTo-AgentSwarmAscii -Text $json
    [Console]::Out.Write([string]::Concat("`n<<<AGENT-SWARM-JSON`n", $text, "`nAGENT-SWARM-JSON>>>`n"))
    [Console]::Out.Flush()
}

function Get-AgentSwarmErrorInfo {
    # The category of a failure: ours (Stop-AgentSwarm), a missing Hyper-V cmdlet, a
    # refused access; anything else is 'other', with Hyper-V's own message.
    param([Parameter(Mandatory = $true)][System.Management.Automation.ErrorRecord]$Record)
    $exception = $Record.Exception
    $category = 'other'
    if ($exception.Data.Contains('AgentSwarmCategory')) {
        $category = [string]$exception.Data['AgentSwarmCategory']
    } elseif ($exception -is [System.Management.Automation.CommandNotFoundException] -and [string]$exception.CommandName -like '*-VM*') {
        $category = 'module-missing'
    } elseif ($exception -is [System.UnauthorizedAccessException] -or [string]$Record.CategoryInfo.Category -eq 'PermissionDenied') {
        # The rights were checked first (Assert-AgentSwarmHost): this is a file or object
        # Hyper-V may not open, not a missing group membership.
        $category = 'access-denied'
    }
    $command = ''
    if ($null -ne $Record.InvocationInfo -and $null -ne $Record.InvocationInfo.MyCommand) {
        $command = [string]$Record.InvocationInfo.MyCommand.Name
    }
    return [ordered]@{
        category = $category
        message = [string]$exception.Message
        type = $exception.GetType().FullName
        id = [string]$Record.FullyQualifiedErrorId
        command = $command
    }
}

function Invoke-AgentSwarm {
    # Runs the script's body and writes its answer: the body's last output as the result,
    # or the error it stopped with. Exit status 0 with a result, 1 with an error.
    param([Parameter(Mandatory = $true)][scriptblock]$Body)
    $code = 0
    try {
        $output = @(& $Body)
        $result = $null
        if ($output.Count -gt 0) {
            $result = $output[$output.Count - 1]
        }
        $answer = [ordered]@{ ok = $true; result = $result }
    } catch {
        $answer = [ordered]@{ ok = $false; error = (Get-AgentSwarmErrorInfo -Record $_) }
        $code = 1
    }
    Write-AgentSwarmFrame -Answer $answer
    exit $code
}

function Get-AgentSwarmValue {
    # A property of an object, or $null when it has none (Set-StrictMode refuses a missing
    # property; registry keys and CIM classes differ between Windows versions).
    param(
        [AllowNull()]$Object,
        [Parameter(Mandatory = $true)][string]$Name
    )
    if ($null -eq $Object) {
        return $null
    }
    $property = $Object.PSObject.Properties[$Name]
    if ($null -eq $property) {
        return $null
    }
    return $property.Value
}

function Test-AgentSwarmRights {
    # Elevated, or a member of Hyper-V Administrators (S-1-5-32-578): either may manage VMs.
    $identity = [System.Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = [System.Security.Principal.WindowsPrincipal]::new($identity)
    $sid = [System.Security.Principal.SecurityIdentifier]::new('S-1-5-32-578')
    return [ordered]@{
        user = [string]$identity.Name
        elevated = [bool]$principal.IsInRole([System.Security.Principal.WindowsBuiltInRole]::Administrator)
        hyperv_admin = [bool]$principal.IsInRole($sid)
    }
}

function Assert-AgentSwarmHost {
    # Before any Hyper-V cmdlet: the rights, then the VM management service. (A missing
    # Hyper-V module shows as its cmdlets being unknown: Get-AgentSwarmErrorInfo.)
    $rights = Test-AgentSwarmRights
    if (-not ($rights.elevated -or $rights.hyperv_admin)) {
        Stop-AgentSwarm -Category 'not-elevated' -Message "$($rights.user) is not in the Hyper-V Administrators group and this is not an elevated (administrator) session"
    }
    $service = @(Get-Service -Name 'vmms' -ErrorAction SilentlyContinue)
    if ($service.Count -eq 0) {
        Stop-AgentSwarm -Category 'hyperv-missing' -Message 'Hyper-V is not enabled on this computer (there is no Hyper-V Virtual Machine Management service)'
    }
    if ([string]$service[0].Status -ne 'Running') {
        Stop-AgentSwarm -Category 'service-stopped' -Message "the Hyper-V Virtual Machine Management service (vmms) is $([string]$service[0].Status), not running"
    }
}

function Get-AgentSwarmVM {
    # The one VM of this exact name; $null (with -AllowMissing) or 'not-found' when there is
    # none, 'ambiguous' when Hyper-V has several (it allows duplicate names).
    param(
        [Parameter(Mandatory = $true)][string]$Name,
        [switch]$AllowMissing
    )
    $found = @()
    try {
        $found = @(Get-VM -Name $Name | Where-Object { $_.Name -eq $Name })
    } catch {
        # Get-VM -Name fails when no VM has the name: the full list tells that apart from a
        # real failure (which is raised again).
        $lookupError = $_
        $same = @(Get-VM | Where-Object { $_.Name -eq $Name })
        if ($same.Count -gt 0) {
            throw $lookupError
        }
        $found = @()
    }
    if ($found.Count -gt 1) {
        Stop-AgentSwarm -Category 'ambiguous' -Message "Hyper-V has $($found.Count) VMs named $Name"
    }
    if ($found.Count -eq 0) {
        if ($AllowMissing) {
            return $null
        }
        Stop-AgentSwarm -Category 'not-found' -Message "Hyper-V has no VM named $Name"
    }
    return $found[0]
}

function Get-AgentSwarmVMFacts {
    param([Parameter(Mandatory = $true)]$VM)
    return [ordered]@{
        name = [string]$VM.Name
        id = [string]$VM.Id
        state = [string]$VM.State
        status = [string]$VM.Status
        notes = [string]$VM.Notes
    }
}

function ConvertTo-AgentSwarmEpochMs {
    param([Parameter(Mandatory = $true)][datetime]$Time)
    return [System.DateTimeOffset]::new($Time.ToUniversalTime()).ToUnixTimeMilliseconds()
}

function Get-AgentSwarmCheckpoints {
    # The VM's checkpoints a user made (not backup "Recovery" or replica ones), oldest first.
    param([Parameter(Mandatory = $true)]$VM)
    return @(Get-VMSnapshot -VM $VM | Where-Object {
            $type = [string]$_.SnapshotType
            $type -ne 'Recovery' -and $type -notlike '*Replica*'
        } | Sort-Object -Property CreationTime)
}
