; Inno Setup 6 script: a per-user (or all-users) installer for the PyInstaller onedir bundle.
; Build on Windows after `pyinstaller --noconfirm installers\anomalydesk.spec` (see .github/workflows/ci.yml):
;   iscc /DAppVersion=0.1.0 installers\windows\anomalydesk.iss
; Output: dist\anomalydesk-<version>-windows-x64-setup.exe
; The bundle does not include a Redis server: install Memurai (or use a Redis you run, --redis URL).

#ifndef AppVersion
  #error Pass the version: iscc /DAppVersion=X.Y.Z installers\windows\anomalydesk.iss
#endif

#define AppName "AnomalyDesk"
#define BundleDir "..\..\dist\anomalydesk"

[Setup]
AppId={{6A0C5F7E-2F7B-4C1D-9B8E-4D1B7A3E9C21}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=AnomalyDesk maintainers
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64
ArchitecturesInstallIn64BitMode=x64
OutputDir=..\..\dist
OutputBaseFilename=anomalydesk-{#AppVersion}-windows-x64-setup
SetupIconFile=..\..\resources\anomalydesk.ico
UninstallDisplayIcon={app}\anomalydesk-gui.exe
Compression=lzma2/fast
SolidCompression=yes
WizardStyle=modern
ChangesEnvironment=yes

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add the anomalydesk command to PATH"; GroupDescription: "Command line:"

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\anomalydesk-gui.exe"; Parameters: "app"; IconFilename: "{app}\_internal\resources\anomalydesk.ico"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\anomalydesk-gui.exe"; Parameters: "app"; IconFilename: "{app}\_internal\resources\anomalydesk.ico"; Tasks: desktopicon

[Registry]
; per-user PATH entry for the console executable (anomalydesk.exe); removed again on uninstall
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\anomalydesk-gui.exe"; Parameters: "app"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
Type: filesandordirs; Name: "{app}\_internal"

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Current: string;
begin
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Current) then
  begin
    Result := True;
    exit;
  end;
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Current) + ';') = 0;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Current, Dir: string;
  P: Integer;
begin
  if CurUninstallStep <> usPostUninstall then
    exit;
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Current) then
    exit;
  Dir := ExpandConstant('{app}');
  P := Pos(';' + Uppercase(Dir), Uppercase(Current));
  if P > 0 then
  begin
    Delete(Current, P, Length(Dir) + 1);
    RegWriteExpandStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Current);
  end;
end;
