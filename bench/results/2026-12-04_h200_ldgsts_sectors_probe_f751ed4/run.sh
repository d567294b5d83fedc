#!/bin/bash
cd "$(dirname "$0")"
/usr/local/cuda/bin/nvcc -O3 -gencode arch=compute_90a,code=sm_90a -o sectors sectors.cu || exit 1
./sectors
timeout 120 ncu --metrics lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_read.sum,smsp__sass_inst_executed_op_ldgsts.sum,l1tex__m_xbar2l1tex_read_sectors.sum,gpu__time_duration.sum ./sectors 2>&1 | grep -E "copy_rows|lts__|smsp__|l1tex__|gpu__time"
timeout 120 ncu --section SourceCounters ./sectors 2>&1 | grep -E "copy_rows|excessive|Excessive" | head -12
