# golden.probe-device (see golden.cmake): mplus-probe --device must fail cleanly where it cannot
# run (exit status 1 or 2 and a message, never a signal), and match the golden where it can.
get_filename_component(out_dir ${OUT} DIRECTORY)
file(MAKE_DIRECTORY ${out_dir})

# Runs the probe with the extra arguments; sets rc and err (its stderr) in the caller.
function(probe)
  execute_process(COMMAND ${PROBE} --scenario ${SCENARIO} --out ${OUT} ${ARGN}
    RESULT_VARIABLE result ERROR_VARIABLE stderr OUTPUT_QUIET TIMEOUT 60)
  string(REPLACE ";" " " args "${ARGN}")
  string(STRIP "${stderr}" stderr)
  message(STATUS "mplus-probe ${args}: exit ${result}: ${stderr}")
  set(rc "${result}" PARENT_SCOPE)
  set(err "${stderr}" PARENT_SCOPE)
endfunction()

probe(--device=bogus)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--device must be cpu or cuda")
  message(FATAL_ERROR "--device=bogus: want exit 2 and a --device message")
endif()

probe(--device=cuda --cuda_plugin=${out_dir}/no-such-plugin.so)
if(NOT rc EQUAL 1 OR NOT err MATCHES "cannot load the CUDA backend plugin .*no-such-plugin.so")
  message(FATAL_ERROR "--cuda_plugin=missing: want exit 1 and the dlopen error")
endif()

# The plugin this build made (found without --cuda_plugin, as in the build tree).
if(HAVE_PLUGIN)
  probe(--device=cuda)
  if(rc EQUAL 0)
    execute_process(COMMAND ${COMPARE} ${OUT} ${GOLDEN} ${TOLERANCE} RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "--device=cuda: ${OUT} does not match ${GOLDEN} within ${TOLERANCE}")
    endif()
  elseif(NOT rc EQUAL 1 OR NOT err MATCHES "CUDA|cuda" OR err MATCHES "cannot load")
    message(FATAL_ERROR "--device=cuda without a GPU: want exit 1 and CUDA's error message")
  endif()
endif()
