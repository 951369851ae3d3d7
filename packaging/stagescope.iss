; Inno Setup script: Stagescope per-user or all-users installer
#define AppVersion "0.1.0"
[Setup]
AppId={{6C1B7E0F-2F54-4C1E-9B7A-3D6A1F5E8C21}
AppName=Stagescope
AppVersion={#AppVersion}
AppPublisher=Stagescope
DefaultDirName={autopf}\Stagescope
DefaultGroupName=Stagescope
PrivilegesRequiredOverridesAllowed=dialog
OutputDir=..\dist\installer
OutputBaseFilename=Stagescope-{#AppVersion}-windows-x64-setup
Compression=lzma2/fast
SolidCompression=no
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
; a single setup.exe holds at most ~2 GB compressed: for a CUDA build set DiskSpanning=yes
; (setup.exe plus Stagescope-...-N.bin files, shipped together); the CPU-only build fits in one file
DiskSpanning=no
DiskSliceSize=max
WizardStyle=modern

[Files]
Source: "..\dist\Stagescope\*"; DestDir: "{app}"; Flags: recursesubdirs ignoreversion

[Icons]
Name: "{group}\Stagescope"; Filename: "{app}\Stagescope.exe"
Name: "{group}\Check the Stagescope install"; Filename: "{cmd}"; Parameters: "/k ""{app}\Stagescope.exe"" --self-test"
Name: "{autodesktop}\Stagescope"; Filename: "{app}\Stagescope.exe"; Tasks: desktopicon

[Tasks]
Name: "desktopicon"; Description: "Create a desktop icon"; GroupDescription: "Additional icons:"

[Run]
Filename: "{app}\Stagescope.exe"; Description: "Start Stagescope"; Flags: nowait postinstall skipifsilent
