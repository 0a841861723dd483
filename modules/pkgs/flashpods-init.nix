# flashpods-init, the in-container helper (images/helper/*.c), linked
# statically so the same file runs in busybox, musl and glibc images when the
# API bind-mounts it read-only at /flashpods/bin/flashpods-init.
{ lib, pkgsStatic }:
pkgsStatic.stdenv.mkDerivation {
  pname = "flashpods-init";
  version = "0.1.0";
  src = lib.cleanSource ../../images/helper;

  buildPhase = ''
    runHook preBuild
    $CC -static -O2 -Wall -Wextra -o flashpods-init *.c
    runHook postBuild
  '';

  installPhase = ''
    runHook preInstall
    install -Dm0555 flashpods-init $out/bin/flashpods-init
    runHook postInstall
  '';

  meta = {
    description = "Static in-container helper: copies the upload, fetches the job's secrets, execs the command";
    mainProgram = "flashpods-init";
    platforms = lib.platforms.linux;
  };
}
