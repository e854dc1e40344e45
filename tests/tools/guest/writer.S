/*
 * writer.S - a 512-byte boot sector that is the whole "guest" of the
 * integration tests.
 *
 * It writes sector after sector to the primary IDE master (ports 0x1F0-0x1F7)
 * with ATA PIO LBA28 WRITE SECTORS (0x30), forever, wrapping at WRAP_LBA. On a
 * data disk kept on a small tmpfs this runs the host out of space within a
 * second, which is how the tests get a real ENOSPC out of QEMU.
 *
 * Each sector holds 64 pairs of (LBA, "QBWG") little-endian dwords, so the
 * data is real and non-zero (a zero page would cost tmpfs nothing).
 *
 * Why the re-issue: with werror=stop QEMU clears BSY before it handles the
 * failed write, so this loop may issue the next WRITE before the VM actually
 * stops; after `cont` QEMU retries the old request and drops the new command,
 * and a guest waiting for DRQ would wait forever. So DRQ is awaited only for
 * a bounded number of status reads, after which the command is issued again.
 *
 * With werror=report a failed write ends with ERR in the status register; the
 * guest then just moves on to the next sector, producing one error per write.
 *
 * Build: as --32 -o writer.o writer.S
 *        ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o writer.bin writer.o
 */
        .code16
        .set ATA_DATA,    0x1f0
        .set ATA_COUNT,   0x1f2
        .set ATA_LBA0,    0x1f3
        .set ATA_DRIVE,   0x1f6
        .set ATA_STATUS,  0x1f7 /* read: status, write: command */
        .set ST_BSY,      0x80
        .set ST_DRQ,      0x08
        .set ST_ERR,      0x01
        .set CMD_WRITE,   0x30
        .set BUF,         0x8000
        .set WRAP_LBA,    0x10000 /* 32 MiB: stays inside the 64 MiB data disk */
        .set DRQ_SPIN,    0x100000

        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        cld
        xor     %ebx, %ebx              /* ebx: the LBA being written */

next_sector:
        mov     $BUF, %di
        mov     $64, %cx
fill:
        mov     %ebx, %eax
        stosl
        mov     $0x47574251, %eax       /* "QBWG" */
        stosl
        loop    fill

issue:
        call    wait_not_busy
        mov     $ATA_DRIVE, %dx
        mov     %ebx, %eax
        shr     $24, %eax
        and     $0x0f, %al
        or      $0xe0, %al              /* LBA mode, master */
        out     %al, %dx
        mov     $ATA_COUNT, %dx
        mov     $1, %al
        out     %al, %dx
        mov     $ATA_LBA0, %dx
        mov     %bl, %al
        out     %al, %dx
        inc     %dx
        mov     %bh, %al
        out     %al, %dx
        inc     %dx
        mov     %ebx, %eax
        shr     $16, %eax
        out     %al, %dx
        mov     $ATA_STATUS, %dx
        mov     $CMD_WRITE, %al
        out     %al, %dx

        mov     $DRQ_SPIN, %ecx
wait_drq:
        in      %dx, %al
        test    $ST_BSY, %al
        jnz     spin
        test    $ST_ERR, %al
        jnz     sector_done             /* refused: move on */
        test    $ST_DRQ, %al
        jnz     send
spin:
        dec     %ecx
        jnz     wait_drq
        jmp     issue                   /* the command was dropped: issue it again */

send:
        mov     $BUF, %si
        mov     $256, %cx
        mov     $ATA_DATA, %dx
        rep outsw
        call    wait_not_busy           /* the write completes (or fails: ERR, go on) */

sector_done:
        inc     %ebx
        cmp     $WRAP_LBA, %ebx
        jb      next_sector
        xor     %ebx, %ebx
        jmp     next_sector

wait_not_busy:
        mov     $ATA_STATUS, %dx
1:      in      %dx, %al
        test    $ST_BSY, %al
        jnz     1b
        ret

        .org    510
        .byte   0x55, 0xaa
